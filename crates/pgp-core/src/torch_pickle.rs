//! A reader for `torch.save` checkpoints (what `FaithDiff.bin` is) that can never execute
//! code. The archive is a ZIP with `<name>/data.pkl` (a pickle) and `<name>/data/<key>` (raw
//! storages). The pickle is interpreted by a small virtual machine that knows only the opcodes
//! of plain containers and scalars and exactly five kinds of global: `OrderedDict`,
//! `torch._utils._rebuild_tensor_v2`, `torch._utils._rebuild_parameter` and the typed storage
//! classes (`torch.FloatStorage`, ...). Any other global or opcode — `os.system`, `eval`,
//! `builtins.getattr`, `INST`, `OBJ`, extensions — rejects the file, naming what it found.
//! Nothing is ever imported or called: a "global" is just a name checked against the list.

use std::io::{Read, Seek};

use safetensors::Dtype;

use crate::error::{Error, Result};

/// A pickled value, as far as a state dict needs.
#[derive(Clone, Debug, PartialEq)]
enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Global(Global),
    Storage(StorageRef),
    Tensor(TensorRef),
}

/// The only globals a state dict may name.
#[derive(Clone, Debug, PartialEq)]
enum Global {
    OrderedDict,
    RebuildTensorV2,
    RebuildParameter,
    StorageType(Dtype),
}

fn allowed_global(module: &str, name: &str) -> Option<Global> {
    let storage = |d| Some(Global::StorageType(d));
    match (module, name) {
        ("collections", "OrderedDict") => Some(Global::OrderedDict),
        ("torch._utils", "_rebuild_tensor_v2") => Some(Global::RebuildTensorV2),
        ("torch._utils", "_rebuild_parameter") => Some(Global::RebuildParameter),
        ("torch", "FloatStorage") => storage(Dtype::F32),
        ("torch", "HalfStorage") => storage(Dtype::F16),
        ("torch", "BFloat16Storage") => storage(Dtype::BF16),
        ("torch", "DoubleStorage") => storage(Dtype::F64),
        ("torch", "LongStorage") => storage(Dtype::I64),
        ("torch", "IntStorage") => storage(Dtype::I32),
        ("torch", "ShortStorage") => storage(Dtype::I16),
        ("torch", "CharStorage") => storage(Dtype::I8),
        ("torch", "ByteStorage") => storage(Dtype::U8),
        ("torch", "BoolStorage") => storage(Dtype::BOOL),
        _ => None,
    }
}

/// A storage named by a persistent id: `('storage', type, key, location, numel)`.
#[derive(Clone, Debug, PartialEq)]
struct StorageRef {
    dtype: Dtype,
    key: String,
}

/// A tensor view of a storage.
#[derive(Clone, Debug, PartialEq)]
struct TensorRef {
    storage: StorageRef,
    offset: usize,
    shape: Vec<usize>,
    stride: Vec<usize>,
}

/// One tensor of a checkpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct TorchTensorInfo {
    /// Its key in the state dict.
    pub name: String,
    /// Element type.
    pub dtype: Dtype,
    /// Shape.
    pub shape: Vec<usize>,
}

fn bad(name: &str, msg: impl std::fmt::Display) -> Error {
    Error::BadCheckpoint {
        source_name: name.to_string(),
        reason: msg.to_string(),
    }
}

/// The pickle virtual machine: a stack, a mark stack and a memo, nothing else.
struct Machine<'a> {
    data: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: std::collections::HashMap<u32, Value>,
    name: &'a str,
}

impl<'a> Machine<'a> {
    fn err(&self, msg: impl std::fmt::Display) -> Error {
        bad(self.name, format!("data.pkl at byte {}: {msg}", self.pos))
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        let end = end.ok_or_else(|| self.err("truncated pickle"))?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }
    fn line(&mut self) -> Result<String> {
        let rest = &self.data[self.pos..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| self.err("unterminated line"))?;
        let s = String::from_utf8_lossy(&rest[..n]).into_owned();
        self.pos += n + 1;
        Ok(s)
    }
    fn pop(&mut self) -> Result<Value> {
        self.stack.pop().ok_or_else(|| self.err("stack underflow"))
    }
    fn pop_mark(&mut self) -> Result<Vec<Value>> {
        let mark = self.marks.pop().ok_or_else(|| self.err("no MARK"))?;
        if mark > self.stack.len() {
            return Err(self.err("MARK past the stack"));
        }
        Ok(self.stack.split_off(mark))
    }
    fn top(&mut self) -> Result<&mut Value> {
        let e = self.err("stack underflow");
        self.stack.last_mut().ok_or(e)
    }
    fn string(&mut self, n: usize) -> Result<Value> {
        let b = self.take(n)?;
        String::from_utf8(b.to_vec())
            .map(Value::Str)
            .map_err(|_| self.err("invalid UTF-8 string"))
    }
    fn memo_get(&mut self, k: u32) -> Result<()> {
        let v = self
            .memo
            .get(&k)
            .cloned()
            .ok_or_else(|| self.err(format!("memo {k} unset")))?;
        self.stack.push(v);
        Ok(())
    }
    fn memo_put(&mut self, k: u32) -> Result<()> {
        let v = self.top()?.clone();
        self.memo.insert(k, v);
        Ok(())
    }
    fn global(&mut self, module: &str, name: &str) -> Result<()> {
        let g = allowed_global(module, name).ok_or_else(|| {
            self.err(format!(
                "refusing global `{module}.{name}`: only plain tensors and containers are \
                 allowed (this file could run code if loaded with torch.load)"
            ))
        })?;
        self.stack.push(Value::Global(g));
        Ok(())
    }

    fn reduce(&mut self, f: Value, args: Value) -> Result<Value> {
        let Value::Tuple(args) = args else {
            return Err(self.err("REDUCE arguments are not a tuple"));
        };
        match f {
            Value::Global(Global::OrderedDict) if args.is_empty() => Ok(Value::Dict(Vec::new())),
            Value::Global(Global::RebuildTensorV2) if args.len() >= 4 => {
                let Value::Storage(storage) = args[0].clone() else {
                    return Err(self.err("_rebuild_tensor_v2 without a storage"));
                };
                let int = |v: &Value| match v {
                    Value::Int(i) if *i >= 0 => Ok(*i as usize),
                    _ => Err(self.err("tensor metadata is not a non-negative integer")),
                };
                let ints = |v: &Value| match v {
                    Value::Tuple(t) => t.iter().map(int).collect::<Result<Vec<_>>>(),
                    _ => Err(self.err("tensor size/stride is not a tuple")),
                };
                let (shape, stride) = (ints(&args[2])?, ints(&args[3])?);
                if shape.len() != stride.len() {
                    return Err(self.err("tensor size and stride differ in rank"));
                }
                Ok(Value::Tensor(TensorRef {
                    storage,
                    offset: int(&args[1])?,
                    shape,
                    stride,
                }))
            }
            Value::Global(Global::RebuildParameter) if !args.is_empty() => match &args[0] {
                Value::Tensor(_) => Ok(args[0].clone()),
                _ => Err(self.err("_rebuild_parameter of a non-tensor")),
            },
            other => Err(self.err(format!("refusing to call {other:?}"))),
        }
    }

    fn run(mut self) -> Result<Value> {
        loop {
            let op = self.u8()?;
            match op {
                0x80 => {
                    let proto = self.u8()?;
                    if proto > 5 {
                        return Err(self.err(format!("pickle protocol {proto}")));
                    }
                }
                0x95 => {
                    self.u64()?; // FRAME: a length hint
                }
                b'.' => return self.pop(),
                b'(' => self.marks.push(self.stack.len()),
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                b'J' => {
                    let v = self.u32()? as i32;
                    self.stack.push(Value::Int(v as i64));
                }
                b'K' => {
                    let v = self.u8()?;
                    self.stack.push(Value::Int(v as i64));
                }
                b'M' => {
                    let v = self.u16()?;
                    self.stack.push(Value::Int(v as i64));
                }
                0x8a => {
                    let n = self.u8()? as usize;
                    let b = self.take(n)?;
                    if n > 8 {
                        return Err(self.err("integer wider than 64 bits"));
                    }
                    let mut buf = if b.last().is_some_and(|&x| x & 0x80 != 0) {
                        [0xff; 8]
                    } else {
                        [0; 8]
                    };
                    buf[..n].copy_from_slice(b);
                    self.stack.push(Value::Int(i64::from_le_bytes(buf)));
                }
                b'G' => {
                    let b = self.take(8)?;
                    self.stack.push(Value::Float(f64::from_be_bytes(
                        b.try_into().expect("8 bytes"),
                    )));
                }
                // Length-prefixed text (BINUNICODE, SHORT_BINUNICODE, BINUNICODE8) and bytes
                // (SHORT_BINSTRING, BINSTRING, SHORT_BINBYTES, BINBYTES).
                b'X' | 0x8c | 0x8d | b'U' | b'T' | b'C' | b'B' => {
                    let n = match op {
                        0x8c | b'U' | b'C' => self.u8()? as usize,
                        0x8d => self.u64()? as usize,
                        _ => self.u32()? as usize,
                    };
                    let v = if matches!(op, b'X' | 0x8c | 0x8d) {
                        self.string(n)?
                    } else {
                        Value::Bytes(self.take(n)?.to_vec())
                    };
                    self.stack.push(v);
                }
                b')' => self.stack.push(Value::Tuple(Vec::new())),
                b']' => self.stack.push(Value::List(Vec::new())),
                b'}' => self.stack.push(Value::Dict(Vec::new())),
                b't' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Tuple(items));
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::List(items));
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    let pairs = pairs(items).ok_or_else(|| self.err("odd DICT items"))?;
                    self.stack.push(Value::Dict(pairs));
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n {
                        return Err(self.err("stack underflow"));
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.stack.push(Value::Tuple(items));
                }
                b'a' => {
                    let v = self.pop()?;
                    match self.top()? {
                        Value::List(l) => l.push(v),
                        _ => return Err(self.err("APPEND to a non-list")),
                    }
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    match self.top()? {
                        Value::List(l) => l.extend(items),
                        _ => return Err(self.err("APPENDS to a non-list")),
                    }
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    match self.top()? {
                        Value::Dict(d) => d.push((k, v)),
                        _ => return Err(self.err("SETITEM on a non-dict")),
                    }
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let p = pairs(items).ok_or_else(|| self.err("odd SETITEMS items"))?;
                    match self.top()? {
                        Value::Dict(d) => d.extend(p),
                        _ => return Err(self.err("SETITEMS on a non-dict")),
                    }
                }
                b'q' => {
                    let k = self.u8()? as u32;
                    self.memo_put(k)?;
                }
                b'r' => {
                    let k = self.u32()?;
                    self.memo_put(k)?;
                }
                0x94 => {
                    let k = self.memo.len() as u32;
                    self.memo_put(k)?;
                }
                b'h' => {
                    let k = self.u8()? as u32;
                    self.memo_get(k)?;
                }
                b'j' => {
                    let k = self.u32()?;
                    self.memo_get(k)?;
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.global(&module, &name)?;
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module, name) {
                        (Value::Str(m), Value::Str(n)) => self.global(&m, &n)?,
                        _ => return Err(self.err("STACK_GLOBAL of non-strings")),
                    }
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let storage = match pid {
                        Value::Tuple(t) if t.len() >= 3 && t[0] == Value::Str("storage".into()) => {
                            match (&t[1], &t[2]) {
                                (Value::Global(Global::StorageType(d)), Value::Str(key)) => {
                                    StorageRef {
                                        dtype: *d,
                                        key: key.clone(),
                                    }
                                }
                                _ => return Err(self.err("malformed storage id")),
                            }
                        }
                        _ => return Err(self.err("persistent id is not a storage")),
                    };
                    self.stack.push(Value::Storage(storage));
                }
                b'R' => {
                    let args = self.pop()?;
                    let f = self.pop()?;
                    let v = self.reduce(f, args)?;
                    self.stack.push(v);
                }
                b'b' => {
                    // BUILD: a state for the object below; only dicts (an OrderedDict's
                    // `_metadata`) are accepted, and the state is dropped.
                    let state = self.pop()?;
                    match (self.top()?, state) {
                        (Value::Dict(_), Value::Dict(_) | Value::None) => {}
                        (Value::Tensor(_), _) => {}
                        _ => return Err(self.err("BUILD on an unexpected object")),
                    }
                }
                b'0' => {
                    self.pop()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.stack.push(v);
                }
                b'1' => {
                    self.pop_mark()?;
                }
                other => {
                    return Err(self.err(format!(
                        "refusing pickle opcode 0x{other:02x} ({:?}): not used by plain state dicts",
                        other as char
                    )));
                }
            }
        }
    }
}

fn pairs(items: Vec<Value>) -> Option<Vec<(Value, Value)>> {
    if !items.len().is_multiple_of(2) {
        return None;
    }
    let mut it = items.into_iter();
    let mut out = Vec::new();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    Some(out)
}

fn element_size(dtype: Dtype) -> usize {
    dtype.bitsize() / 8
}

/// An opened `torch.save` checkpoint.
pub struct TorchCheckpoint<R: Read + Seek> {
    name: String,
    archive: zip::ZipArchive<R>,
    prefix: String,
    tensors: Vec<(String, TensorRef)>,
}

impl<R: Read + Seek> TorchCheckpoint<R> {
    /// Reads the archive's index and interprets its pickle; no tensor data is read yet.
    pub fn open(name: impl Into<String>, reader: R) -> Result<Self> {
        let name = name.into();
        let mut archive = zip::ZipArchive::new(reader).map_err(|e| {
            bad(
                &name,
                format!(
                    "not a torch.save ZIP archive ({e}); files from torch older than 1.6 \
                     (legacy format) must be re-saved with a current torch"
                ),
            )
        })?;
        let pkl = archive
            .file_names()
            .find(|n| *n == "data.pkl" || n.ends_with("/data.pkl"))
            .map(str::to_string)
            .ok_or_else(|| bad(&name, "the archive has no data.pkl"))?;
        let prefix = pkl.trim_end_matches("data.pkl").to_string();
        if let Ok(mut f) = archive.by_name(&format!("{prefix}byteorder")) {
            let mut order = String::new();
            f.read_to_string(&mut order)
                .map_err(|e| bad(&name, format!("byteorder: {e}")))?;
            if order.trim() != "little" {
                return Err(bad(
                    &name,
                    format!("byte order `{}` is not supported", order.trim()),
                ));
            }
        }
        let mut bytes = Vec::new();
        archive
            .by_name(&pkl)
            .and_then(|mut f| f.read_to_end(&mut bytes).map_err(Into::into))
            .map_err(|e| bad(&name, format!("reading {pkl}: {e}")))?;
        let root = Machine {
            data: &bytes,
            pos: 0,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: Default::default(),
            name: &name,
        }
        .run()?;
        let Value::Dict(items) = root else {
            return Err(bad(
                &name,
                "the checkpoint is not a state dict (a dict of tensors)",
            ));
        };
        let mut tensors = Vec::with_capacity(items.len());
        for (k, v) in items {
            let Value::Str(key) = k else {
                return Err(bad(&name, format!("state dict key {k:?} is not a string")));
            };
            let Value::Tensor(t) = v else {
                return Err(bad(
                    &name,
                    format!("state dict entry `{key}` is not a tensor"),
                ));
            };
            tensors.push((key, t));
        }
        Ok(Self {
            name,
            archive,
            prefix,
            tensors,
        })
    }

    /// Every tensor, in the file's order.
    pub fn tensors(&self) -> Vec<TorchTensorInfo> {
        self.tensors
            .iter()
            .map(|(n, t)| TorchTensorInfo {
                name: n.clone(),
                dtype: t.storage.dtype,
                shape: t.shape.clone(),
            })
            .collect()
    }

    /// One tensor's data, contiguous and little-endian (views and shared storages resolved).
    pub fn read(&mut self, key: &str) -> Result<(Dtype, Vec<usize>, Vec<u8>)> {
        let t = self
            .tensors
            .iter()
            .find(|(n, _)| n == key)
            .map(|(_, t)| t.clone())
            .ok_or_else(|| bad(&self.name, format!("no tensor `{key}`")))?;
        let entry = format!("{}data/{}", self.prefix, t.storage.key);
        let mut storage = Vec::new();
        self.archive
            .by_name(&entry)
            .and_then(|mut f| f.read_to_end(&mut storage).map_err(Into::into))
            .map_err(|e| bad(&self.name, format!("reading storage {entry}: {e}")))?;
        let es = element_size(t.storage.dtype);
        let numel: usize = t.shape.iter().product();
        let mut out = Vec::with_capacity(numel * es);
        if numel > 0 {
            // The furthest element the view touches must lie inside the storage.
            let last = t.offset
                + t.shape
                    .iter()
                    .zip(&t.stride)
                    .map(|(&n, &s)| (n - 1) * s)
                    .sum::<usize>();
            if (last + 1) * es > storage.len() {
                return Err(bad(
                    &self.name,
                    format!("tensor `{key}` reaches past its storage {entry}"),
                ));
            }
            let mut index = vec![0usize; t.shape.len()];
            for _ in 0..numel {
                let e = t.offset
                    + index
                        .iter()
                        .zip(&t.stride)
                        .map(|(i, s)| i * s)
                        .sum::<usize>();
                out.extend_from_slice(&storage[e * es..(e + 1) * es]);
                for d in (0..index.len()).rev() {
                    index[d] += 1;
                    if index[d] < t.shape[d] {
                        break;
                    }
                    index[d] = 0;
                }
            }
        }
        Ok((t.storage.dtype, t.shape, out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn open(bytes: &'static [u8]) -> Result<TorchCheckpoint<Cursor<&'static [u8]>>> {
        TorchCheckpoint::open("test.bin", Cursor::new(bytes))
    }

    fn check_against(bin: &'static [u8], expected: &'static [u8], n: usize) {
        let mut ckpt = open(bin).unwrap();
        let reference = safetensors::SafeTensors::deserialize(expected).unwrap();
        let infos = ckpt.tensors();
        assert_eq!(infos.len(), n);
        for info in infos {
            let (dtype, shape, data) = ckpt.read(&info.name).unwrap();
            let r = reference.tensor(&info.name).unwrap();
            assert_eq!(dtype, r.dtype(), "{}", info.name);
            assert_eq!(shape, r.shape(), "{}", info.name);
            assert_eq!(data, r.data(), "{}", info.name);
        }
    }

    #[test]
    fn reads_every_dtype_view_and_shared_storage() {
        check_against(
            include_bytes!("../../../tests/pickle/state_dict.bin"),
            include_bytes!("../../../tests/pickle/expected.safetensors"),
            10,
        );
    }

    #[test]
    fn reads_a_module_state_dict() {
        check_against(
            include_bytes!("../../../tests/pickle/module.bin"),
            include_bytes!("../../../tests/pickle/module.safetensors"),
            4,
        );
    }

    #[test]
    fn refuses_code_and_names_the_global() {
        let err = open(include_bytes!("../../../tests/pickle/malicious.bin"))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("refusing global `posix.system`"), "{err}");
        assert!(err.starts_with("test.bin:"), "{err}");
    }

    #[test]
    fn refuses_legacy_and_non_zip_files() {
        let err = open(include_bytes!("../../../tests/pickle/legacy.bin"))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("legacy format"), "{err}");
        let err = open(b"not a zip at all").err().unwrap().to_string();
        assert!(err.contains("not a torch.save ZIP archive"), "{err}");
    }

    #[test]
    fn refuses_unknown_opcodes_and_truncation() {
        let run = |data: &[u8]| {
            Machine {
                data,
                pos: 0,
                stack: Vec::new(),
                marks: Vec::new(),
                memo: Default::default(),
                name: "p",
            }
            .run()
        };
        // INST (`i`) builds arbitrary objects: refused.
        let err = run(b"\x80\x02(ios\nsystem\n.").unwrap_err().to_string();
        assert!(err.contains("refusing pickle opcode 0x69"), "{err}");
        // builtins.eval via STACK_GLOBAL.
        let err = run(b"\x80\x04\x8c\x08builtins\x8c\x04eval\x93.")
            .unwrap_err()
            .to_string();
        assert!(err.contains("refusing global `builtins.eval`"), "{err}");
        assert!(run(b"\x80\x02}q\x00(X\x01\x00").is_err());
        assert_eq!(run(b"\x80\x02K\x07.").unwrap(), Value::Int(7));
    }
}
