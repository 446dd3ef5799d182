export { isDnsLabel, isDnsSubdomain } from './dns.js';
