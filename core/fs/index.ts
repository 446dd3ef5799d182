/** Files: the one atomic replace of a file, and the watch of a folder. Node built-ins only. */
export { writeFileAtomic, type AtomicWriteFs } from './atomic-file.js';
export { watchFolder, type FolderWatch } from './folder-watch.js';
