/** Socket options through the native addon: the original destination, IP_TRANSPARENT, malloc_trim. */
export { originalDestination, releaseFreeMemory, setTransparent, SOCKOPT_ADDON_PATH, transparentSocket, type OriginalDestination } from './sockopt.js';
