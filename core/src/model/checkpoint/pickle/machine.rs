//! The pickle half of a `torch.save` file: a small virtual machine over `data.pkl` (protocol 2,
//! the opcodes and globals state dicts use) that returns each entry's storage and view. Nothing
//! is executed: a fixed list of globals is understood and anything else is an error.

use std::collections::HashMap;
use std::path::Path;
use std::rc::Rc;

use tch::Kind;

use super::{PickleError, Result};

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

pub(super) struct StorageRef {
    pub(super) key: String,
    pub(super) kind: Kind,
    pub(super) numel: i64,
}

/// A tensor as `_rebuild_tensor_v2` describes it; built once the whole pickle is read.
pub(super) struct TensorSpec {
    pub(super) storage: Rc<StorageRef>,
    pub(super) offset: i64,
    pub(super) size: Vec<i64>,
    pub(super) stride: Vec<i64>,
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

/// Runs the pickle program `data` and returns the state dict's entries in order.
pub(super) fn unpickle(data: &[u8], path: &Path) -> Result<Vec<(String, Rc<TensorSpec>)>> {
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
