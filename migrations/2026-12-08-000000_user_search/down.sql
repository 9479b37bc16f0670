DROP INDEX users_display_name_prefix;
DROP INDEX users_username_key_prefix;
