// `node --import <this file>`: makes '@ovsb/plugin-sdk' and '@ovsb/plugin-sdk/testing' resolve to
// this SDK, so plugin projects need not install it (their lock file then pins only the build
// toolchain and does not depend on where the SDK lives). build.mjs maps them the same way.
import { register } from 'node:module';

register('./resolve-hook.mjs', import.meta.url);
