// The module resolution hook that register.mjs installs.
const SDK = {
  '@ovsb/plugin-sdk': new URL('./src/index.js', import.meta.url).href,
  '@ovsb/plugin-sdk/testing': new URL('./src/testing.js', import.meta.url).href,
};

export async function resolve(specifier, context, nextResolve) {
  if (Object.hasOwn(SDK, specifier)) return { url: SDK[specifier], shortCircuit: true };
  return nextResolve(specifier, context);
}
