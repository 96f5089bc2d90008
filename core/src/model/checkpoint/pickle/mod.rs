//! Reader for PyTorch `torch.save` checkpoints (`pytorch_model.bin`), in two halves: the zip
//! archive and its storages ([`archive`]), and the pickle machine that reads the state dict's
//! structure ([`machine`]).
//!
//! The Hugging Face hub ships many OPT weights only as `pytorch_model.bin`: a state dict
//! pickled by `torch.save` in its zip format, usually in fp16. This module reads such files
//! into tch tensors without Python. It opens the zip archive, runs a small pickle virtual
//! machine over `<archive>/data.pkl` (protocol 2, the opcodes and globals that state dicts
//! use) and builds each tensor from its raw storage entry `<archive>/data/<key>`.
//!
//! Nothing in the pickle is executed: a fixed list of globals is understood and anything
//! else is an error, so a checkpoint cannot run code. Only little-endian, zip-format
//! checkpoints (torch >= 1.6) are read. Corrupt files give a [`PickleError`], never a panic.

mod archive;
mod machine;

use std::collections::HashMap;
use std::path::Path;

use tch::Tensor;

use self::archive::{materialise, Archive};
use self::machine::unpickle;
pub use crate::error::PickleError;

type Result<T> = std::result::Result<T, PickleError>;

/// Reads a `torch.save` state dict (zip format) into (name, tensor) pairs in file order.
///
/// Tensors come back contiguous, on the CPU, without grad, in the stored dtype. Entries that
/// shared a storage in the file (tied weights, slices) may share memory here too, as in torch.
pub fn read_state_dict(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let mut archive = Archive::open(path)?;
    let pickle = archive.read(&format!("{}data.pkl", archive.prefix))?;
    let entries = unpickle(&pickle, path)?;
    let mut storages = HashMap::new();
    let mut out = Vec::with_capacity(entries.len());
    for (key, spec) in entries {
        let storage = archive.storage(&key, &spec.storage, &mut storages)?;
        let tensor = materialise(path, &key, &storage, &spec)?;
        out.push((key, tensor));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::io::Read;
    use std::io::Write;
    use std::path::PathBuf;
    use tch::Kind;
    use zip::ZipArchive;

    #[rustfmt::skip]
    const NAMES: [&str; 10] =
        ["fp16_2d", "fp32_1d", "bf16", "int64", "bool", "scalar", "transposed", "shared_full", "shared_slice", "param"];

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pickle").join(name)
    }

    /// All entries of the fixture checkpoint, in archive order.
    fn fixture_entries() -> Vec<(String, Vec<u8>)> {
        let mut zip = ZipArchive::new(File::open(fixture("state_dict.bin")).unwrap()).unwrap();
        (0..zip.len())
            .map(|i| {
                let mut f = zip.by_index(i).unwrap();
                let mut bytes = Vec::new();
                f.read_to_end(&mut bytes).unwrap();
                (f.name().to_owned(), bytes)
            })
            .collect()
    }

    fn write_zip(path: &Path, entries: &[(String, Vec<u8>)]) {
        let mut zip = zip::ZipWriter::new(File::create(path).unwrap());
        let opts = zip::write::FileOptions::default().compression_method(zip::CompressionMethod::Stored);
        for (name, bytes) in entries {
            zip.start_file(name.as_str(), opts).unwrap();
            zip.write_all(bytes).unwrap();
        }
        zip.finish().unwrap();
    }

    /// Reads a checkpoint built from `entries` and returns the error message.
    fn error_for(entries: &[(String, Vec<u8>)]) -> (PathBuf, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ckpt.bin");
        write_zip(&path, entries);
        let err = read_state_dict(&path).map(|_| ()).unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
        (path, err)
    }

    fn pickle_only(pickle: &[u8]) -> Vec<(String, Vec<u8>)> {
        vec![("archive/data.pkl".to_owned(), pickle.to_vec())]
    }

    #[test]
    fn reads_fixture_like_torch() {
        let got = read_state_dict(&fixture("state_dict.bin")).unwrap();
        let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, NAMES);
        let expected: HashMap<_, _> =
            Tensor::read_safetensors(fixture("expected.safetensors")).unwrap().into_iter().collect();
        assert_eq!(expected.len(), got.len());
        for (name, tensor) in &got {
            let want = &expected[name];
            assert_eq!((tensor.kind(), tensor.size()), (want.kind(), want.size()), "{name}");
            assert!(tensor.equal(want), "{name}: {tensor} != {want}");
            assert!(tensor.is_contiguous() && !tensor.requires_grad(), "{name}");
        }
        assert_eq!(got[0].1.kind(), Kind::Half);
        assert_eq!(got[5].1.size(), Vec::<i64>::new()); // 0-dim
    }

    #[test]
    fn rejects_garbage_and_truncated_files() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = std::fs::read(fixture("state_dict.bin")).unwrap();
        let cases = [("garbage.bin", b"\x80\x02}q\x00.".to_vec()), ("half.bin", bytes[..bytes.len() / 2].to_vec())];
        for (name, bytes) in cases {
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            let err = read_state_dict(&path).map(|_| ()).unwrap_err().to_string();
            assert!(err.contains(&path.display().to_string()) && err.contains("legacy pre-1.6"), "{err}");
        }
        let missing = read_state_dict(&dir.path().join("absent.bin")).map(|_| ()).unwrap_err().to_string();
        assert!(missing.contains("absent.bin") && missing.contains("I/O error"), "{missing}");
    }

    #[test]
    fn corrupt_pickles_error_without_panicking() {
        let entries = fixture_entries();
        let pickle = &entries.iter().find(|(n, _)| n.ends_with("/data.pkl")).unwrap().1;
        let path = Path::new("x.bin");
        for end in 0..pickle.len() {
            assert!(unpickle(&pickle[..end], path).is_err(), "truncated at {end}");
        }
        for i in 0..pickle.len() {
            for byte in [0x00, 0x7f, 0xff, pickle[i] ^ 0x01] {
                let mut bad = pickle.clone();
                bad[i] = byte;
                let _ = unpickle(&bad, path); // Ok or Err are both fine: no panic
            }
        }
        // A million nested tuples: values never nest in memory, so nothing recurses.
        let deep = [&b"\x80\x02)"[..], &[0x85; 1_000_000], b"."].concat();
        let err = unpickle(&deep, path).map(|_| ()).unwrap_err().to_string();
        assert!(err.contains("the pickled object is a tuple, not a state dict"), "{err}");
    }

    #[test]
    fn zip_without_data_pkl() {
        let (_, err) = error_for(&[("archive/version".to_owned(), b"3\n".to_vec())]);
        assert!(err.contains("data.pkl"), "{err}");
    }

    #[test]
    fn names_unsupported_opcodes_globals_and_values() {
        let (_, err) = error_for(&pickle_only(b"\x80\x02N0."));
        assert!(err.contains("opcode POP (0x30) at byte 3"), "{err}");
        let (_, err) = error_for(&pickle_only(b"\x80\x02cos\nsystem\n."));
        assert!(err.contains("unsupported global os.system at byte 2"), "{err}");
        let (_, err) = error_for(&pickle_only(b"\x80\x02ctorch\nComplexFloatStorage\n."));
        assert!(err.contains("unsupported storage dtype torch.ComplexFloatStorage"), "{err}");
        let (_, err) = error_for(&pickle_only(b"\x80\x02}X\x01\x00\x00\x00aK\x07s."));
        assert!(err.contains("entry \"a\" is an int, not a tensor"), "{err}");
        let (_, err) = error_for(&[
            ("archive/byteorder".to_owned(), b"big".to_vec()),
            ("archive/data.pkl".to_owned(), b"\x80\x02}.".to_vec()),
        ]);
        assert!(err.contains("byteorder is \"big\""), "{err}");
    }

    #[test]
    fn storage_too_small() {
        // A storage entry shorter than its declared numel.
        let mut entries = fixture_entries();
        let data0 = entries.iter_mut().find(|(n, _)| n.ends_with("/data/0")).unwrap();
        data0.1.truncate(10);
        let (_, err) = error_for(&entries);
        assert!(
            err.contains("entry \"fp16_2d\": storage too small: storage 0 holds 10 bytes, less than 24 Half"),
            "{err}"
        );
        // fp16_2d's size (4, 6) widened to (4, 7): its view would run past the storage.
        let mut entries = fixture_entries();
        let pickle = &mut entries.iter_mut().find(|(n, _)| n.ends_with("/data.pkl")).unwrap().1;
        let at = pickle.windows(5).position(|w| w == b"K\x04K\x06\x86").unwrap();
        pickle[at + 3] = 7;
        let (_, err) = error_for(&entries);
        assert!(err.contains("storage 0 has 24 elements, too few for size [4, 7], stride [6, 1]"), "{err}");
    }
}
