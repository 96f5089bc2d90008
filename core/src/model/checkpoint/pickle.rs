//! Reader for PyTorch `torch.save` checkpoints (`pytorch_model.bin`).
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

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use tch::{Kind, Tensor};
use zip::result::ZipError;
use zip::ZipArchive;

/// Why a checkpoint could not be read. Every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum PickleError {
    /// The file could not be opened or read.
    #[error("{}: I/O error: {source}", .path.display())]
    Io { path: PathBuf, source: std::io::Error },
    /// Not a zip archive (e.g. the legacy pre-1.6 torch.save format).
    #[error("{} is not a torch.save zip archive (the legacy pre-1.6 format is not supported; re-save with torch>=1.6): {source}", .path.display())]
    NotZip { path: PathBuf, source: ZipError },
    /// An entry of the archive is missing or unreadable (bad CRC, unsupported compression).
    #[error("{}: cannot read zip entry {entry}: {source}", .path.display())]
    Zip { path: PathBuf, entry: String, source: ZipError },
    /// The archive has no `<archive>/data.pkl` entry.
    #[error("{}: no `<archive>/data.pkl` entry; not a torch.save checkpoint", .path.display())]
    MissingPickle { path: PathBuf },
    /// The archive's `byteorder` entry is not `little`.
    #[error("{}: byteorder is {found:?}; only little-endian checkpoints are supported", .path.display())]
    ByteOrder { path: PathBuf, found: String },
    /// `data.pkl` uses a pickle opcode this reader does not implement.
    #[error("{}: data.pkl: unsupported pickle opcode {name} (0x{code:02x}) at byte {offset}", .path.display())]
    UnsupportedOpcode { path: PathBuf, name: &'static str, code: u8, offset: usize },
    /// `data.pkl` names a class or function outside the supported list.
    #[error("{}: data.pkl: unsupported global {module}.{name} at byte {offset}", .path.display())]
    UnsupportedGlobal { path: PathBuf, module: String, name: String, offset: usize },
    /// A torch storage class or dtype this reader does not map to a tch kind.
    #[error("{}: data.pkl: unsupported storage dtype torch.{dtype} at byte {offset}", .path.display())]
    UnsupportedDtype { path: PathBuf, dtype: String, offset: usize },
    /// `data.pkl` is truncated or not shaped like a torch state dict.
    #[error("{}: data.pkl: malformed pickle at byte {offset}: {reason}", .path.display())]
    Malformed { path: PathBuf, offset: usize, reason: String },
    /// The unpickled object is not a dict with string keys.
    #[error("{}: the pickled object is {found}, not a state dict", .path.display())]
    NotAStateDict { path: PathBuf, found: String },
    /// A state-dict value is not a tensor.
    #[error("{}: entry {key:?} is {found}, not a tensor", .path.display())]
    NotATensor { path: PathBuf, key: String, found: &'static str },
    /// A storage holds fewer bytes than declared, or a tensor's view reaches outside it.
    #[error("{}: entry {key:?}: storage too small: {detail}", .path.display())]
    StorageTooSmall { path: PathBuf, key: String, detail: String },
    /// libtorch refused to build a tensor.
    #[error("{}: entry {key:?}: libtorch error: {source}", .path.display())]
    Torch { path: PathBuf, key: String, source: tch::TchError },
}

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

// ---------------------------------------------------------------------------------------
// Zip archive

struct Archive<'p> {
    zip: ZipArchive<File>,
    path: &'p Path,
    /// `"<archive_name>/"`: the directory every entry lives in (its name varies by file).
    prefix: String,
    file_len: u64,
}

impl<'p> Archive<'p> {
    fn open(path: &'p Path) -> Result<Self> {
        let io = |source| PickleError::Io { path: path.to_owned(), source };
        let file = File::open(path).map_err(io)?;
        let file_len = file.metadata().map_err(io)?.len();
        let zip = ZipArchive::new(file).map_err(|source| match source {
            ZipError::Io(source) => PickleError::Io { path: path.to_owned(), source },
            source => PickleError::NotZip { path: path.to_owned(), source },
        })?;
        let pickle = zip.file_names().filter(|n| *n == "data.pkl" || n.ends_with("/data.pkl")).min();
        let Some(prefix) = pickle.map(|n| n.trim_end_matches("data.pkl").to_owned()) else {
            return Err(PickleError::MissingPickle { path: path.to_owned() });
        };
        let mut archive = Archive { zip, path, prefix, file_len };
        let byteorder = format!("{}byteorder", archive.prefix);
        if archive.zip.file_names().any(|n| n == byteorder) {
            let found = String::from_utf8_lossy(&archive.read(&byteorder)?).trim().to_owned();
            if found != "little" {
                return Err(PickleError::ByteOrder { path: path.to_owned(), found });
            }
        }
        Ok(archive)
    }

    fn read(&mut self, entry: &str) -> Result<Vec<u8>> {
        let err = |source| PickleError::Zip { path: self.path.to_owned(), entry: entry.to_owned(), source };
        let mut file = self.zip.by_name(entry).map_err(err)?;
        // The declared size is untrusted: never reserve more than the file could hold.
        let mut bytes = Vec::with_capacity(file.size().min(self.file_len) as usize);
        file.read_to_end(&mut bytes).map_err(|e| err(ZipError::Io(e)))?;
        Ok(bytes)
    }

    /// The whole storage as a 1-D tensor, read once per (key, dtype) and then shared.
    fn storage(&mut self, entry: &str, s: &StorageRef, cache: &mut StorageCache) -> Result<Tensor> {
        if let Some(t) = cache.get(&(s.key.clone(), s.kind)) {
            return Ok(t.shallow_clone());
        }
        let bytes = self.read(&format!("{}data/{}", self.prefix, s.key))?;
        let need = usize::try_from(s.numel).ok().and_then(|n| n.checked_mul(s.kind.elt_size_in_bytes()));
        let Some(need) = need.filter(|&need| need <= bytes.len()) else {
            let (have, numel, kind) = (bytes.len(), s.numel, s.kind);
            let detail = format!("storage {} holds {have} bytes, less than {numel} {kind:?} elements", s.key);
            return Err(PickleError::StorageTooSmall { path: self.path.to_owned(), key: entry.to_owned(), detail });
        };
        let tensor = Tensor::f_from_data_size(&bytes[..need], &[s.numel], s.kind)
            .map_err(|source| PickleError::Torch { path: self.path.to_owned(), key: entry.to_owned(), source })?;
        cache.insert((s.key.clone(), s.kind), tensor.shallow_clone());
        Ok(tensor)
    }
}

type StorageCache = HashMap<(String, Kind), Tensor>;

/// Views `storage` with the tensor's size/stride/offset (checked first, so libtorch never
/// sees an out-of-bounds view) and copies it out contiguous.
fn materialise(path: &Path, key: &str, storage: &Tensor, spec: &TensorSpec) -> Result<Tensor> {
    let numel = storage.numel();
    if required_elements(spec).is_none_or(|n| n > numel as u64) {
        let (size, stride, offset) = (&spec.size, &spec.stride, spec.offset);
        let detail = format!(
            "storage {} has {numel} elements, too few for size {size:?}, stride {stride:?}, offset {offset}",
            spec.storage.key
        );
        return Err(PickleError::StorageTooSmall { path: path.to_owned(), key: key.to_owned(), detail });
    }
    storage
        .f_as_strided(spec.size.as_slice(), spec.stride.as_slice(), spec.offset)
        .and_then(|view| view.f_contiguous())
        .map_err(|source| PickleError::Torch { path: path.to_owned(), key: key.to_owned(), source })
}

/// Storage elements a strided view needs (offset of its last element + 1), or `None` if the
/// layout is invalid (negative values, rank mismatch, overflow).
fn required_elements(spec: &TensorSpec) -> Option<u64> {
    let (size, stride) = (&spec.size, &spec.stride);
    if spec.offset < 0 || size.len() != stride.len() || size.iter().chain(stride).any(|&v| v < 0) {
        return None;
    }
    size.iter().try_fold(1i64, |n, &d| n.checked_mul(d))?; // the copy's element count must fit
    if size.contains(&0) {
        return Some(0);
    }
    let extent = size.iter().zip(stride).try_fold(0i64, |acc, (&n, &s)| acc.checked_add((n - 1).checked_mul(s)?));
    u64::try_from(extent?.checked_add(spec.offset)?).ok()?.checked_add(1)
}

// ---------------------------------------------------------------------------------------
// Pickle values

#[derive(Clone)]
enum Value {
    None,
    // Values a state dict never needs to inspect keep only their type.
    Bool,
    Float,
    Bytes,
    Int(i64),
    Str(String),
    // Containers are indices into `Vm::objects`: values never nest (so even an absurdly deep
    // pickle cannot overflow the stack when dropped), and a list or dict can still be filled
    // after it was memoised, which pickle relies on.
    Tuple(usize),
    List(usize),
    /// Keys and values alternate in the object's items, in insertion order.
    Dict(usize),
    Global(Global),
    Storage(Rc<StorageRef>),
    Tensor(Rc<TensorSpec>),
}

/// The only callables and classes a checkpoint may name.
#[derive(Clone, Copy)]
enum Global {
    OrderedDict,
    RebuildTensor,
    RebuildParameter,
    /// A storage class (`torch.HalfStorage`) or dtype (`torch.float16`).
    Kind(Kind),
}

struct StorageRef {
    key: String,
    kind: Kind,
    numel: i64,
}

/// A tensor as `_rebuild_tensor_v2` describes it; built once the whole pickle is read.
struct TensorSpec {
    storage: Rc<StorageRef>,
    offset: i64,
    size: Vec<i64>,
    stride: Vec<i64>,
}

impl Value {
    fn type_name(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool => "a bool",
            Value::Int(_) => "an int",
            Value::Float => "a float",
            Value::Str(_) => "a str",
            Value::Bytes => "bytes",
            Value::Tuple(_) => "a tuple",
            Value::List(_) => "a list",
            Value::Dict(_) => "a dict",
            Value::Global(_) => "a class or function",
            Value::Storage(_) => "a storage",
            Value::Tensor(_) => "a tensor",
        }
    }
}

/// Element type of a `torch.<X>Storage` class or `torch.<dtype>` global.
fn torch_kind(name: &str) -> Option<Kind> {
    Some(match name {
        "HalfStorage" | "float16" | "half" => Kind::Half,
        "FloatStorage" | "float32" | "float" => Kind::Float,
        "BFloat16Storage" | "bfloat16" => Kind::BFloat16,
        "DoubleStorage" | "float64" | "double" => Kind::Double,
        "LongStorage" | "int64" | "long" => Kind::Int64,
        "IntStorage" | "int32" | "int" => Kind::Int,
        "ShortStorage" | "int16" | "short" => Kind::Int16,
        "CharStorage" | "int8" => Kind::Int8,
        // An untyped storage is raw bytes; torch.load reads it as uint8 too.
        "ByteStorage" | "UntypedStorage" | "uint8" => Kind::Uint8,
        "BoolStorage" | "bool" => Kind::Bool,
        _ => return None,
    })
}

/// Names of other torch storage classes and dtypes, reported as unsupported dtypes.
fn is_dtype_name(name: &str) -> bool {
    name.ends_with("Storage")
        || ["complex", "float8", "uint", "qint", "quint"].iter().any(|p| name.starts_with(p))
        || matches!(name, "cfloat" | "cdouble" | "chalf")
}

// ---------------------------------------------------------------------------------------
// Pickle virtual machine

/// Runs the pickle program `data` and returns the state dict's entries in order.
fn unpickle(data: &[u8], path: &Path) -> Result<Vec<(String, Rc<TensorSpec>)>> {
    let mut vm =
        Vm { data, path, pos: 0, op_start: 0, stack: vec![], marks: vec![], memo: HashMap::new(), objects: vec![] };
    let root = vm.run()?;
    vm.entries(root)
}

struct Vm<'a> {
    data: &'a [u8],
    path: &'a Path,
    pos: usize,
    /// Byte offset of the opcode being executed, for error messages.
    op_start: usize,
    stack: Vec<Value>,
    /// Stack heights saved by MARK; TUPLE, DICT, SETITEMS, ... take everything above the last.
    marks: Vec<usize>,
    memo: HashMap<u64, Value>,
    /// The items of every tuple, list and dict, indexed by `Value::{Tuple, List, Dict}`.
    objects: Vec<Vec<Value>>,
}

impl<'a> Vm<'a> {
    fn run(&mut self) -> Result<Value> {
        loop {
            self.op_start = self.pos;
            let op = self.uint(1)? as u8;
            let pushed = match op {
                0x80 => self.skip(1)?,     // PROTO <version>
                0x95 => self.skip(8)?,     // FRAME <u64 length>: a read-ahead hint, ops follow inline
                b'.' => return self.pop(), // STOP
                b'(' => self.mark(),
                b'N' => Some(Value::None),
                0x88 | 0x89 => Some(Value::Bool), // NEWTRUE, NEWFALSE
                b'J' => Some(Value::Int(i32::from_le_bytes(self.array()?).into())), // BININT
                b'K' => Some(Value::Int(self.uint(1)? as i64)), // BININT1
                b'M' => Some(Value::Int(self.uint(2)? as i64)), // BININT2
                0x8a => Some(self.long1()?),
                b'G' => self.skip(8)?.or(Some(Value::Float)), // BINFLOAT
                b'X' => Some(self.unicode(4)?),               // BINUNICODE
                0x8c => Some(self.unicode(1)?),               // SHORT_BINUNICODE
                0x8d => Some(self.unicode(8)?),               // BINUNICODE8
                b'C' => self.sized(1).map(|_| Some(Value::Bytes))?, // SHORT_BINBYTES
                b'B' => self.sized(4).map(|_| Some(Value::Bytes))?, // BINBYTES
                b')' => Some(Value::Tuple(self.alloc(vec![]))),
                b'}' => Some(Value::Dict(self.alloc(vec![]))),
                b']' => Some(Value::List(self.alloc(vec![]))),
                b't' => Some(Value::Tuple(self.alloc_items(None)?)),
                // TUPLE1, TUPLE2, TUPLE3
                0x85..=0x87 => Some(Value::Tuple(self.alloc_items(Some(usize::from(op - 0x84)))?)),
                b'l' => Some(Value::List(self.alloc_items(None)?)),
                b'd' => Some(self.dict()?),
                b's' => Some(self.set_items(Some(2))?), // SETITEM: one key/value pair
                b'u' => Some(self.set_items(None)?),    // SETITEMS: pairs above the mark
                b'a' => Some(self.append(Some(1))?),    // APPEND
                b'e' => Some(self.append(None)?),       // APPENDS
                b'q' => Some(self.put(1)?),             // BINPUT
                b'r' => Some(self.put(4)?),             // LONG_BINPUT
                0x94 => Some(self.put(0)?),             // MEMOIZE
                b'h' => Some(self.get(1)?),             // BINGET
                b'j' => Some(self.get(4)?),             // LONG_BINGET
                b'c' => Some(self.global()?),
                0x93 => Some(self.stack_global()?),
                b'R' | 0x81 => Some(self.reduce()?), // REDUCE f(*args); NEWOBJ cls(*args), same for us
                b'b' => Some(self.build()?),
                b'Q' => Some(self.persistent_load()?), // BINPERSID: a storage in data/<key>
                _ => return Err(self.unsupported(op)),
            };
            self.stack.extend(pushed);
        }
    }

    fn malformed(&self, reason: impl Into<String>) -> PickleError {
        PickleError::Malformed { path: self.path.to_owned(), offset: self.op_start, reason: reason.into() }
    }

    fn unsupported(&self, code: u8) -> PickleError {
        let name = OTHER_OPCODES.iter().find(|(c, _)| *c == code).map_or("<not a pickle opcode>", |(_, n)| n);
        PickleError::UnsupportedOpcode { path: self.path.to_owned(), name, code, offset: self.op_start }
    }

    // --- reading operands

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let data = self.data;
        let Some(bytes) = self.pos.checked_add(n).and_then(|end| data.get(self.pos..end)) else {
            return Err(self.malformed("unexpected end of data.pkl"));
        };
        self.pos += n;
        Ok(bytes)
    }

    fn skip(&mut self, n: usize) -> Result<Option<Value>> {
        self.take(n).map(|_| None)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let bytes = self.take(N)?;
        bytes.try_into().map_err(|_| self.malformed("short read"))
    }

    /// A little-endian unsigned integer of `width` (<= 8) bytes.
    fn uint(&mut self, width: usize) -> Result<u64> {
        Ok(self.take(width)?.iter().rev().fold(0, |acc, &b| acc << 8 | u64::from(b)))
    }

    /// LONG1: a length byte, then that many bytes of little-endian two's complement.
    fn long1(&mut self) -> Result<Value> {
        let bytes = self.sized(1)?;
        if bytes.len() > 8 {
            return Err(self.malformed(format!("LONG1 of {} bytes does not fit in 64 bits", bytes.len())));
        }
        let negative = bytes.last().is_some_and(|b| b & 0x80 != 0);
        let mut buf = [if negative { 0xff } else { 0 }; 8];
        buf[..bytes.len()].copy_from_slice(bytes);
        Ok(Value::Int(i64::from_le_bytes(buf)))
    }

    /// A length of `width` bytes, then that many bytes.
    fn sized(&mut self, width: usize) -> Result<&'a [u8]> {
        let n = self.uint(width)?;
        let n = usize::try_from(n).map_err(|_| self.malformed(format!("length {n} too large")))?;
        self.take(n)
    }

    fn unicode(&mut self, width: usize) -> Result<Value> {
        let bytes = self.sized(width)?;
        let s = std::str::from_utf8(bytes).map_err(|e| self.malformed(format!("invalid UTF-8: {e}")))?;
        Ok(Value::Str(s.to_owned()))
    }

    /// GLOBAL's operand: a newline-terminated module or name.
    fn line(&mut self) -> Result<String> {
        let rest = self.data.get(self.pos..).unwrap_or_default();
        let Some(n) = rest.iter().position(|&b| b == b'\n') else {
            return Err(self.malformed("GLOBAL name without a newline"));
        };
        let line = self.take(n + 1)?;
        String::from_utf8(line[..n].to_vec()).map_err(|_| self.malformed("GLOBAL name is not UTF-8"))
    }

    // --- stack, memo and containers

    /// The lowest stack index a pop may reach: the last MARK is a fence.
    fn floor(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn mark(&mut self) -> Option<Value> {
        self.marks.push(self.stack.len());
        None
    }

    fn pop(&mut self) -> Result<Value> {
        let value = if self.stack.len() > self.floor() { self.stack.pop() } else { None };
        value.ok_or_else(|| self.malformed("stack underflow"))
    }

    /// The top `n` items in push order, or with `None` everything above the last MARK
    /// (which is consumed).
    fn pop_items(&mut self, n: Option<usize>) -> Result<Vec<Value>> {
        let start = match n {
            Some(n) => self.stack.len().checked_sub(n).filter(|&s| s >= self.floor()),
            None => self.marks.pop(),
        };
        match start.filter(|&s| s <= self.stack.len()) {
            Some(start) => Ok(self.stack.split_off(start)),
            None => Err(self.malformed(if n.is_some() { "stack underflow" } else { "no MARK" })),
        }
    }

    fn alloc(&mut self, items: Vec<Value>) -> usize {
        self.objects.push(items);
        self.objects.len() - 1
    }

    fn alloc_items(&mut self, n: Option<usize>) -> Result<usize> {
        let items = self.pop_items(n)?;
        Ok(self.alloc(items))
    }

    /// DICT: a new dict from the key/value pairs above the mark.
    fn dict(&mut self) -> Result<Value> {
        let items = self.pop_items(None)?;
        let dict = Value::Dict(self.alloc(vec![]));
        self.extend(dict, items, true)
    }

    fn set_items(&mut self, n: Option<usize>) -> Result<Value> {
        let items = self.pop_items(n)?;
        let dict = self.pop()?;
        self.extend(dict, items, true)
    }

    fn append(&mut self, n: Option<usize>) -> Result<Value> {
        let items = self.pop_items(n)?;
        let list = self.pop()?;
        self.extend(list, items, false)
    }

    /// Adds items to a list, or key/value pairs to a dict. A pickled dict never repeats a
    /// key, so pairs are simply appended.
    fn extend(&mut self, target: Value, items: Vec<Value>, dict: bool) -> Result<Value> {
        let n = items.len();
        let object = match (&target, dict) {
            (Value::Dict(i), true) if n % 2 == 0 => *i,
            (Value::List(i), false) => *i,
            _ => return Err(self.malformed(format!("cannot add {n} item(s) to {}", target.type_name()))),
        };
        self.objects[object].extend(items);
        Ok(target)
    }

    /// Stores the top of the stack (left in place) at a memo index of `width` bytes;
    /// width 0 is MEMOIZE, which uses the next free index.
    fn put(&mut self, width: usize) -> Result<Value> {
        let index = if width == 0 { self.memo.len() as u64 } else { self.uint(width)? };
        let value = self.pop()?;
        self.memo.insert(index, value.clone());
        Ok(value)
    }

    fn get(&mut self, width: usize) -> Result<Value> {
        let index = self.uint(width)?;
        self.memo.get(&index).cloned().ok_or_else(|| self.malformed(format!("memo index {index} is unset")))
    }

    // --- globals and objects

    /// GLOBAL: `module\nname\n` inline.
    fn global(&mut self) -> Result<Value> {
        let module = self.line()?;
        let name = self.line()?;
        self.resolve(module, name)
    }

    /// STACK_GLOBAL: module and name strings from the stack.
    fn stack_global(&mut self) -> Result<Value> {
        match (self.pop()?, self.pop()?) {
            (Value::Str(name), Value::Str(module)) => self.resolve(module, name),
            _ => Err(self.malformed("STACK_GLOBAL expects two strings")),
        }
    }

    fn resolve(&self, module: String, name: String) -> Result<Value> {
        let (path, offset) = (self.path.to_owned(), self.op_start);
        Ok(Value::Global(match (module.as_str(), name.as_str()) {
            ("collections", "OrderedDict") => Global::OrderedDict,
            ("torch._utils", "_rebuild_tensor_v2") => Global::RebuildTensor,
            ("torch._utils", "_rebuild_parameter" | "_rebuild_parameter_with_state") => Global::RebuildParameter,
            ("torch" | "torch.storage", n) => match torch_kind(n) {
                Some(kind) => Global::Kind(kind),
                None if is_dtype_name(n) => return Err(PickleError::UnsupportedDtype { path, dtype: name, offset }),
                None => return Err(PickleError::UnsupportedGlobal { path, module, name, offset }),
            },
            _ => return Err(PickleError::UnsupportedGlobal { path, module, name, offset }),
        }))
    }

    fn reduce(&mut self) -> Result<Value> {
        let (args, callable) = (self.pop()?, self.pop()?);
        let (Value::Global(f), Value::Tuple(args)) = (&callable, args) else {
            return Err(self.malformed(format!("REDUCE/NEWOBJ on {}", callable.type_name())));
        };
        let args = self.objects[args].clone();
        match (f, args.as_slice()) {
            (Global::OrderedDict, []) => Ok(Value::Dict(self.alloc(vec![]))),
            // _rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata])
            (
                Global::RebuildTensor,
                [Value::Storage(storage), Value::Int(offset), Value::Tuple(size), Value::Tuple(stride), ..],
            ) => {
                let (storage, offset, size, stride) =
                    (storage.clone(), *offset, self.ints(*size)?, self.ints(*stride)?);
                Ok(Value::Tensor(Rc::new(TensorSpec { storage, offset, size, stride })))
            }
            // _rebuild_parameter(data, requires_grad, hooks): only the data matters here.
            (Global::RebuildParameter, [tensor @ Value::Tensor(_), ..]) => Ok(tensor.clone()),
            _ => Err(self.malformed(format!("unsupported call of {} with {} argument(s)", f.name(), args.len()))),
        }
    }

    /// The ints of a size or stride tuple.
    fn ints(&self, tuple: usize) -> Result<Vec<i64>> {
        let int = |v: &Value| match v {
            Value::Int(i) => Ok(*i),
            v => Err(self.malformed(format!("expected an int in a size/stride, found {}", v.type_name()))),
        };
        self.objects[tuple].iter().map(int).collect()
    }

    /// BUILD sets an object's state. The state dict's OrderedDict gets a `_metadata`
    /// attribute this way (from nn.Module.state_dict); it is ignored, as is tensor state.
    fn build(&mut self) -> Result<Value> {
        let _state = self.pop()?;
        match self.pop()? {
            target @ (Value::Dict(_) | Value::Tensor(_)) => Ok(target),
            other => Err(self.malformed(format!("BUILD on {}", other.type_name()))),
        }
    }

    /// torch.save's persistent id: `('storage', storage_type, key, location, numel)`.
    fn persistent_load(&mut self) -> Result<Value> {
        let items = match self.pop()? {
            Value::Tuple(i) => self.objects[i].as_slice(),
            _ => &[],
        };
        match items {
            [Value::Str(tag), Value::Global(Global::Kind(kind)), Value::Str(key), _, Value::Int(numel)]
                if tag == "storage" =>
            {
                Ok(Value::Storage(Rc::new(StorageRef { key: key.clone(), kind: *kind, numel: *numel })))
            }
            _ => Err(self.malformed("persistent id is not ('storage', type, key, location, numel)")),
        }
    }

    /// The entries of the unpickled top-level dict, which must all be tensors keyed by strings.
    fn entries(&mut self, root: Value) -> Result<Vec<(String, Rc<TensorSpec>)>> {
        let path = self.path.to_owned();
        let not_dict = |found: String| PickleError::NotAStateDict { path: path.clone(), found };
        let Value::Dict(dict) = root else { return Err(not_dict(root.type_name().to_owned())) };
        let mut items = std::mem::take(&mut self.objects[dict]).into_iter();
        let mut entries = Vec::with_capacity(items.len() / 2);
        while let (Some(k), Some(v)) = (items.next(), items.next()) {
            match (k, v) {
                (Value::Str(key), Value::Tensor(spec)) => entries.push((key, spec)),
                (Value::Str(key), v) => return Err(PickleError::NotATensor { path, key, found: v.type_name() }),
                (k, _) => return Err(not_dict(format!("a dict with {} keys", k.type_name()))),
            }
        }
        Ok(entries)
    }
}

impl Global {
    fn name(self) -> &'static str {
        match self {
            Global::OrderedDict => "collections.OrderedDict",
            Global::RebuildTensor => "torch._utils._rebuild_tensor_v2",
            Global::RebuildParameter => "torch._utils._rebuild_parameter",
            Global::Kind(_) => "a torch storage class or dtype",
        }
    }
}

/// Names of the pickle opcodes not implemented above, for error messages.
#[rustfmt::skip]
const OTHER_OPCODES: &[(u8, &str)] = &[
    (b'0', "POP"), (b'1', "POP_MARK"), (b'2', "DUP"), (b'F', "FLOAT"), (b'I', "INT"), (b'L', "LONG"),
    (b'P', "PERSID"), (b'S', "STRING"), (b'T', "BINSTRING"), (b'U', "SHORT_BINSTRING"), (b'V', "UNICODE"),
    (b'g', "GET"), (b'i', "INST"), (b'o', "OBJ"), (b'p', "PUT"), (0x82, "EXT1"), (0x83, "EXT2"),
    (0x84, "EXT4"), (0x8b, "LONG4"), (0x8e, "BINBYTES8"), (0x8f, "EMPTY_SET"), (0x90, "ADDITEMS"),
    (0x91, "FROZENSET"), (0x92, "NEWOBJ_EX"), (0x96, "BYTEARRAY8"), (0x97, "NEXT_BUFFER"),
    (0x98, "READONLY_BUFFER"),
];

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

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
