DROP TABLE messages;
DROP TABLE rooms;
DROP TABLE users;
