//! A Secret volume as the kubelet writes it (its "atomic writer"): the files
//! are symlinks through `..data` to a timestamped directory, and an update
//! writes a new directory and renames a new `..data` link over the old one,
//! so a reader sees the old files or the new ones, never a mix.

use std::os::unix::fs::symlink;
use std::path::Path;

/// A volume directory; empty until the first [`SecretVolume::write`] (an
/// optional Secret that does not exist yet).
#[derive(Debug)]
pub struct SecretVolume {
    dir: tempfile::TempDir,
    generation: u32,
}

impl Default for SecretVolume {
    fn default() -> Self {
        SecretVolume::new()
    }
}

impl SecretVolume {
    pub fn new() -> SecretVolume {
        SecretVolume { dir: tempfile::tempdir().expect("tempdir"), generation: 0 }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The Secret's data now: `(key, value)`.
    pub fn write(&mut self, files: &[(&str, &str)]) {
        self.generation += 1;
        let base = self.dir.path();
        let version = format!("..2026_11_30_00_00_{:02}.{}", self.generation, std::process::id());
        std::fs::create_dir(base.join(&version)).expect("data dir");
        for (key, value) in files {
            std::fs::write(base.join(&version).join(key), value).expect("data file");
        }
        let _ = std::fs::remove_file(base.join("..data_tmp"));
        symlink(&version, base.join("..data_tmp")).expect("..data_tmp");
        std::fs::rename(base.join("..data_tmp"), base.join("..data")).expect("..data");
        for (key, _) in files {
            if std::fs::symlink_metadata(base.join(key)).is_err() {
                symlink(format!("..data/{key}"), base.join(key)).expect("key link");
            }
        }
    }
}
