//! Every seed of every fuzz target, replayed (a plain `cargo test`): the
//! corpus under `fuzz/corpus/TARGET/` (the admission seeds wrap the
//! injector's pod fixtures), plus the real users' configs of the config
//! corpus.

use std::path::{Path, PathBuf};

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                out.extend(files(&path));
            } else {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn every_seed_passes_its_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut replayed = 0;
    for (name, target) in mirrord_fuzz_targets::TARGETS {
        let mut seeds = files(&root.join("fuzz/corpus").join(name));
        if name == "config" {
            // The real users' configs, whatever their golden report says.
            seeds.extend(
                files(&root.join("config/tests/corpus"))
                    .into_iter()
                    .filter(|p| p.extension().is_some_and(|e| e == "json" || e == "yaml" || e == "toml")),
            );
        }
        assert!(!seeds.is_empty(), "no seeds for {name}");
        for seed in &seeds {
            let data = std::fs::read(seed).unwrap_or_else(|e| panic!("{}: {e}", seed.display()));
            // A panic names its seed.
            let outcome = std::panic::catch_unwind(|| target(&data));
            assert!(outcome.is_ok(), "{name}: {} fails", seed.display());
            replayed += 1;
        }
    }
    eprintln!("{replayed} seeds replayed");
}

/// The admission seeds reach the deep end of their target: most of them
/// are injected, so the patch is applied and the pod reviewed again.
#[test]
fn most_admission_seeds_are_injected() {
    use mirrord_injector::mutate::Settings;
    use mirrord_injector::review::{answer, Outcome};
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/admission");
    let settings = Settings { image: "mirrord-proxy:fuzz".to_owned(), native_sidecar: true };
    let seeds = files(&dir);
    let injected = seeds
        .iter()
        .filter(|p| {
            let data = std::fs::read(p).unwrap();
            matches!(answer(&data, |_| true, &settings), Ok((_, Outcome::Injected)))
        })
        .count();
    assert!(injected * 2 > seeds.len(), "{injected} of {} admission seeds injected", seeds.len());
}
