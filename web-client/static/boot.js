// Loads the WebAssembly app; the build renames both files and rewrites this import.
import init from './web_client.js';
init();
