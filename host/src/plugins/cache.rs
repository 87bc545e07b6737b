//! Compiled plugins, keyed by the SHA-256 of their bytes: in memory for the life of the
//! process, and on disk (when a directory is configured) so that a restart does not recompile.
//!
//! Files are named `<sha256>-<engine hash>.cwasm`; the engine hash changes with the wasmtime
//! version and settings, so an artifact is only ever loaded by an engine that can run it. The
//! directory is created mode 0700 and must be writable by ovsb alone: loading a compiled
//! artifact trusts its contents.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::Ordering;

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

use super::{LoadError, RuntimeError, RuntimeStats};

pub(crate) struct CompileCache {
    dir: Option<PathBuf>,
    engine_hash: String,
    compiled: Mutex<HashMap<[u8; 32], Component>>,
}

impl CompileCache {
    pub fn new(engine: &Engine, dir: Option<&Path>) -> Result<Self, RuntimeError> {
        if let Some(dir) = dir {
            create_private_dir(dir).map_err(|source| RuntimeError::CacheDir { path: dir.to_path_buf(), source })?;
        }
        let mut hasher = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Ok(CompileCache {
            dir: dir.map(Path::to_path_buf),
            engine_hash: format!("{:016x}", hasher.finish()),
            compiled: Mutex::new(HashMap::new()),
        })
    }

    pub fn get_or_compile(
        &self,
        engine: &Engine,
        name: &str,
        wasm: &[u8],
        stats: &RuntimeStats,
    ) -> Result<([u8; 32], Component), LoadError> {
        let digest: [u8; 32] = Sha256::digest(wasm).into();
        if let Some(component) = self.lock().get(&digest) {
            stats.memory_cache_hits.fetch_add(1, Ordering::Relaxed);
            return Ok((digest, component.clone()));
        }
        let file = self.dir.as_ref().map(|dir| dir.join(format!("{}-{}.cwasm", hex::encode(digest), self.engine_hash)));
        let component = match file.as_deref().and_then(|file| load_artifact(engine, file)) {
            Some(component) => {
                stats.disk_cache_hits.fetch_add(1, Ordering::Relaxed);
                component
            }
            None => {
                let component = Component::new(engine, wasm)
                    .map_err(|e| LoadError::NotAComponent { name: name.to_string(), reason: format!("{e:#}") })?;
                stats.compilations.fetch_add(1, Ordering::Relaxed);
                if let Some(file) = &file
                    && let Err(err) = store_artifact(&component, file)
                {
                    tracing::warn!(plugin = name, file = %file.display(), "cannot write the compiled plugin to the cache: {err}");
                }
                component
            }
        };
        self.lock().insert(digest, component.clone());
        Ok((digest, component))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Component>> {
        self.compiled.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Loads a compiled artifact this cache wrote; `None` (recompile) if absent or unusable.
#[allow(unsafe_code)]
fn load_artifact(engine: &Engine, file: &Path) -> Option<Component> {
    if !file.exists() {
        return None;
    }
    // SAFETY: `deserialize_file` trusts that the file is a wasmtime artifact that was not
    // tampered with. Only this cache writes files here (atomically, via rename), in a directory
    // created mode 0700, and the name carries the engine's compatibility hash; wasmtime itself
    // still checks the header and refuses artifacts of another version or configuration.
    match unsafe { Component::deserialize_file(engine, file) } {
        Ok(component) => Some(component),
        Err(err) => {
            tracing::warn!(file = %file.display(), "ignoring an unusable compiled plugin in the cache: {err:#}");
            None
        }
    }
}

fn store_artifact(component: &Component, file: &Path) -> std::io::Result<()> {
    let bytes = component.serialize().map_err(|e| std::io::Error::other(format!("{e:#}")))?;
    // Unique per process and write: runtimes of one process may compile the same plugin at once.
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let tmp = file.with_extension(format!("tmp{}-{}", std::process::id(), WRITES.fetch_add(1, Ordering::Relaxed)));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, file)
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}
