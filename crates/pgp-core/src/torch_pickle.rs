//! A reader for `torch.save` checkpoints (what `FaithDiff.bin` is) that can never execute
//! code. The archive is a ZIP with `<name>/data.pkl` (a pickle) and `<name>/data/<key>` (raw
//! storages). The pickle is interpreted by a small virtual machine that knows only the opcodes
//! of plain containers and scalars and exactly five kinds of global: `OrderedDict`,
//! `torch._utils._rebuild_tensor_v2`, `torch._utils._rebuild_parameter` and the typed storage
//! classes (`torch.FloatStorage`, ...). Any other global or opcode — `os.system`, `eval`,
//! `builtins.getattr`, `INST`, `OBJ`, extensions — rejects the file, naming what it found.
//! Nothing is ever imported or called: a "global" is just a name checked against the list.
//!
//! The root is a dict: a state dict, or a dict of them with plain values beside (OSEDiff's
//! `osediff.pkl`: `state_dict_unet`, `rank_unet`, lists of module names). Nested dicts are
//! flattened into dotted keys; plain values (bools, numbers, strings, lists of them) are kept
//! as [`Meta`]; anything else is refused.
//!
//! A hostile file cannot exhaust the reader either: containers nest at most [`MAX_DEPTH`]
//! deep, copies made by `DUP` and the memo are charged against [`MAX_COST`] (so an 80-byte
//! `DUP`/`TUPLE` doubling bomb stops after about a million values), duplicate state-dict keys
//! are refused, archive entries must be stored (torch.save never compresses), and every size
//! computed from a tensor's shape, stride and offset is checked for overflow and against its
//! storage before anything is allocated.

use std::collections::BTreeMap;
use std::io::{Read, Seek};

use safetensors::Dtype;

use crate::error::{Error, Result};

/// Deepest container nesting accepted (a state dict needs about five levels).
pub const MAX_DEPTH: u32 = 64;
/// Most values the reader may copy (`DUP`, memo reads and writes) in one pickle, counting a
/// container as its element count and a string as one value per 64 bytes (about 60 MB at
/// most): the test fixture's 820 tensors cost 28,511 (test
/// `the_fixture_stays_far_under_the_copy_budget`), so a full FaithDiff UNet (about 2,600
/// tensors) needs about a tenth of it.
pub const MAX_COST: u64 = 1 << 20;
/// Largest `data.pkl` accepted (FaithDiff's is about 200 KiB).
pub const MAX_PICKLE_BYTES: u64 = 256 << 20;

/// A pickled value, as far as a state dict needs.
#[derive(Clone, Debug, PartialEq)]
enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Seq),
    List(Seq),
    /// Keys and values alternate.
    Dict(Seq),
    Global(Global),
    Storage(StorageRef),
    Tensor(TensorRef),
}

/// A container's items with its nesting depth and copy cost, kept up to date as it grows
/// (values are never shared, so both are exact).
#[derive(Clone, Debug, PartialEq)]
struct Seq {
    items: Vec<Value>,
    depth: u32,
    cost: u64,
}

impl Seq {
    fn new(items: Vec<Value>) -> Self {
        let mut s = Seq {
            items: Vec::with_capacity(items.len()),
            depth: 1,
            cost: 1,
        };
        s.extend(items);
        s
    }
    fn extend(&mut self, items: Vec<Value>) {
        for v in items {
            self.depth = self.depth.max(v.depth().saturating_add(1));
            self.cost = self.cost.saturating_add(v.cost());
            self.items.push(v);
        }
    }
}

impl Value {
    fn depth(&self) -> u32 {
        match self {
            Value::Tuple(s) | Value::List(s) | Value::Dict(s) => s.depth,
            _ => 0,
        }
    }
    /// What copying this value costs, in values.
    fn cost(&self) -> u64 {
        match self {
            Value::Tuple(s) | Value::List(s) | Value::Dict(s) => s.cost,
            Value::Str(t) => 1 + t.len() as u64 / 64,
            Value::Bytes(b) => 1 + b.len() as u64 / 64,
            Value::Tensor(t) => 2 + 2 * t.shape.len() as u64 + t.storage.key.len() as u64 / 64,
            Value::Storage(s) => 1 + s.key.len() as u64 / 64,
            _ => 1,
        }
    }
    /// Its kind, for messages (never the value: a hostile one can be huge).
    fn kind(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "a bool",
            Value::Int(_) => "an int",
            Value::Float(_) => "a float",
            Value::Str(_) => "a string",
            Value::Bytes(_) => "bytes",
            Value::Tuple(_) => "a tuple",
            Value::List(_) => "a list",
            Value::Dict(_) => "a dict",
            Value::Global(_) => "a global",
            Value::Storage(_) => "a storage",
            Value::Tensor(_) => "a tensor",
        }
    }
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
    /// Cost of the copies made so far (bounded by [`MAX_COST`]).
    spent: u64,
    name: &'a str,
}

impl<'a> Machine<'a> {
    fn new(data: &'a [u8], name: &'a str) -> Self {
        Machine {
            data,
            pos: 0,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: Default::default(),
            spent: 0,
            name,
        }
    }
    /// Charges a copy of `cost` values against [`MAX_COST`], before it is made.
    fn charge(&mut self, cost: u64) -> Result<()> {
        self.spent = self.spent.saturating_add(cost);
        if self.spent > MAX_COST {
            return Err(self.err(format!(
                "the pickle copies more than {MAX_COST} values (a memory bomb?)"
            )));
        }
        Ok(())
    }
    /// Pushes a container made of `items`, refusing nesting deeper than [`MAX_DEPTH`].
    fn push_seq(&mut self, make: fn(Seq) -> Value, items: Vec<Value>) -> Result<()> {
        let seq = Seq::new(items);
        self.check_depth(seq.depth)?;
        self.stack.push(make(seq));
        Ok(())
    }
    fn check_depth(&self, depth: u32) -> Result<()> {
        if depth > MAX_DEPTH {
            return Err(self.err(format!(
                "containers nested more than {MAX_DEPTH} deep (a state dict needs about five)"
            )));
        }
        Ok(())
    }
    /// Adds `items` to the list or dict on top of the stack.
    fn extend_top(&mut self, dict: bool, items: Vec<Value>, op: &str) -> Result<()> {
        let depth = match self.top()? {
            Value::List(s) if !dict => {
                s.extend(items);
                s.depth
            }
            Value::Dict(s) if dict => {
                s.extend(items);
                s.depth
            }
            other => {
                let kind = other.kind();
                return Err(self.err(format!("{op} on {kind}")));
            }
        };
        self.check_depth(depth)
    }
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
        let cost = match self.memo.get(&k) {
            Some(v) => v.cost(),
            None => return Err(self.err(format!("memo {k} unset"))),
        };
        self.charge(cost)?;
        let v = self.memo[&k].clone();
        self.stack.push(v);
        Ok(())
    }
    fn memo_put(&mut self, k: u32) -> Result<()> {
        let cost = self.top()?.cost();
        self.charge(cost)?;
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
        let Value::Tuple(Seq { items: args, .. }) = args else {
            return Err(self.err("REDUCE arguments are not a tuple"));
        };
        match f {
            Value::Global(Global::OrderedDict) if args.is_empty() => {
                Ok(Value::Dict(Seq::new(Vec::new())))
            }
            Value::Global(Global::RebuildTensorV2) if args.len() >= 4 => {
                let Value::Storage(storage) = args[0].clone() else {
                    return Err(self.err("_rebuild_tensor_v2 without a storage"));
                };
                let int = |v: &Value| {
                    match v {
                        Value::Int(i) => usize::try_from(*i).ok(),
                        _ => None,
                    }
                    .ok_or_else(|| self.err("tensor metadata is not a non-negative integer"))
                };
                let ints = |v: &Value| match v {
                    Value::Tuple(t) => t.items.iter().map(int).collect::<Result<Vec<_>>>(),
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
            Value::Global(Global::RebuildParameter) if !args.is_empty() => {
                match args.into_iter().next() {
                    Some(t @ Value::Tensor(_)) => Ok(t),
                    _ => Err(self.err("_rebuild_parameter of a non-tensor")),
                }
            }
            Value::Global(g) => Err(self.err(format!(
                "refusing to call {g:?} with {} arguments",
                args.len()
            ))),
            other => Err(self.err(format!("refusing to call {}", other.kind()))),
        }
    }

    fn run(&mut self) -> Result<Value> {
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
                b')' => self.push_seq(Value::Tuple, Vec::new())?,
                b']' => self.push_seq(Value::List, Vec::new())?,
                b'}' => self.push_seq(Value::Dict, Vec::new())?,
                b't' => {
                    let items = self.pop_mark()?;
                    self.push_seq(Value::Tuple, items)?;
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push_seq(Value::List, items)?;
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    if !items.len().is_multiple_of(2) {
                        return Err(self.err("odd DICT items"));
                    }
                    self.push_seq(Value::Dict, items)?;
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n {
                        return Err(self.err("stack underflow"));
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.push_seq(Value::Tuple, items)?;
                }
                b'a' => {
                    let v = self.pop()?;
                    self.extend_top(false, vec![v], "APPEND")?;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.extend_top(false, items, "APPENDS")?;
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.extend_top(true, vec![k, v], "SETITEM")?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    if !items.len().is_multiple_of(2) {
                        return Err(self.err("odd SETITEMS items"));
                    }
                    self.extend_top(true, items, "SETITEMS")?;
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
                        Value::Tuple(Seq { items: t, .. })
                            if t.len() >= 3 && t[0] == Value::Str("storage".into()) =>
                        {
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
                    let cost = self.top()?.cost();
                    self.charge(cost)?;
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

/// An archive entry, which must be stored: torch.save never compresses, so a compressed entry
/// (a possible decompression bomb) is refused.
fn stored_entry<'a, R: Read + Seek>(
    archive: &'a mut zip::ZipArchive<R>,
    name: &str,
    entry: &str,
) -> Result<zip::read::ZipFile<'a, R>> {
    let f = archive
        .by_name(entry)
        .map_err(|e| bad(name, format!("reading {entry}: {e}")))?;
    if f.compression() != zip::CompressionMethod::Stored {
        return Err(bad(
            name,
            format!(
                "{entry} is compressed ({}); torch.save writes stored entries",
                f.compression()
            ),
        ));
    }
    Ok(f)
}

/// Reads at most `limit` bytes of a stored archive entry.
fn read_entry<R: Read + Seek>(
    archive: &mut zip::ZipArchive<R>,
    name: &str,
    entry: &str,
    limit: u64,
) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    stored_entry(archive, name, entry)?
        .take(limit)
        .read_to_end(&mut bytes)
        .map_err(|e| bad(name, format!("reading {entry}: {e}")))?;
    Ok(bytes)
}

fn element_size(dtype: Dtype) -> usize {
    dtype.bitsize() / 8
}

/// A plain value a checkpoint holds beside its tensors (OSEDiff's LoRA ranks and the lists of
/// adapted module names, a training script's step count).
#[derive(Clone, Debug, PartialEq)]
pub enum Meta {
    /// `True` / `False`.
    Bool(bool),
    /// An int.
    Int(i64),
    /// A float.
    Float(f64),
    /// A string.
    Str(String),
    /// A list or tuple of plain values.
    List(Vec<Meta>),
}

impl Meta {
    /// The value as an int, if it is one.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Self::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// The value as a list of strings, if it is one.
    pub fn as_strings(&self) -> Option<Vec<&str>> {
        match self {
            Self::List(items) => items
                .iter()
                .map(|m| match m {
                    Self::Str(s) => Some(s.as_str()),
                    _ => None,
                })
                .collect(),
            _ => None,
        }
    }
}

/// What a checkpoint's pickle holds: its tensors by dotted key (a dict inside the dict is
/// flattened: `state_dict_unet` → `state_dict_unet.conv_in.weight`) and its plain values.
type Contents = (Vec<(String, TensorRef)>, BTreeMap<String, Meta>);

/// Interprets a bare pickle (an archive's `data.pkl`) as a state dict: its tensors' names,
/// dtypes and shapes. [`TorchCheckpoint::open`] does this after unzipping.
pub fn parse_state_dict(name: &str, pickle: &[u8]) -> Result<Vec<TorchTensorInfo>> {
    Ok(entries(name, pickle)?
        .0
        .into_iter()
        .map(|(name, t)| TorchTensorInfo {
            name,
            dtype: t.storage.dtype,
            shape: t.shape,
        })
        .collect())
}

/// The checkpoint's tensors (keys unique, nested dicts flattened) and plain values.
fn entries(name: &str, bytes: &[u8]) -> Result<Contents> {
    let root = Machine::new(bytes, name).run()?;
    if !matches!(root, Value::Dict(_)) {
        return Err(bad(
            name,
            format!(
                "the checkpoint is {}, not a state dict (a dict of tensors)",
                root.kind()
            ),
        ));
    }
    let mut out = (Vec::new(), BTreeMap::new());
    let mut seen = std::collections::HashSet::new();
    flatten(name, "", root, &mut out, &mut seen)?;
    Ok(out)
}

/// Adds a dict's entries under `prefix` (the pickle machine bounds the nesting).
fn flatten(
    name: &str,
    prefix: &str,
    dict: Value,
    out: &mut Contents,
    seen: &mut std::collections::HashSet<String>,
) -> Result<()> {
    let Value::Dict(Seq { items, .. }) = dict else {
        unreachable!("called on dicts")
    };
    let mut items = items.into_iter();
    while let (Some(k), Some(v)) = (items.next(), items.next()) {
        let Value::Str(key) = k else {
            return Err(bad(
                name,
                format!("a state dict key is {}, not a string", k.kind()),
            ));
        };
        let key = format!("{prefix}{key}");
        if !seen.insert(key.clone()) {
            return Err(bad(name, format!("state dict key `{key}` appears twice")));
        }
        match v {
            Value::Tensor(t) => out.0.push((key, t)),
            d @ Value::Dict(_) => flatten(name, &format!("{key}."), d, out, seen)?,
            v => {
                let m = meta(&v).ok_or_else(|| {
                    bad(
                        name,
                        format!(
                            "state dict entry `{key}` is {}, not a tensor, a dict or a plain                              value",
                            v.kind()
                        ),
                    )
                })?;
                out.1.insert(key, m);
            }
        }
    }
    Ok(())
}

/// A plain value (bools, numbers, strings and lists or tuples of them), if `v` is one.
fn meta(v: &Value) -> Option<Meta> {
    Some(match v {
        Value::Bool(b) => Meta::Bool(*b),
        Value::Int(i) => Meta::Int(*i),
        Value::Float(f) => Meta::Float(*f),
        Value::Str(s) => Meta::Str(s.clone()),
        Value::List(s) | Value::Tuple(s) => {
            Meta::List(s.items.iter().map(meta).collect::<Option<Vec<_>>>()?)
        }
        _ => return None,
    })
}

/// An opened `torch.save` checkpoint.
pub struct TorchCheckpoint<R: Read + Seek> {
    name: String,
    archive: zip::ZipArchive<R>,
    prefix: String,
    tensors: Vec<(String, TensorRef)>,
    meta: BTreeMap<String, Meta>,
}

impl<R: Read + Seek> TorchCheckpoint<R> {
    /// The name it was opened with (used in errors).
    pub fn name(&self) -> &str {
        &self.name
    }

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
        let order_entry = format!("{prefix}byteorder");
        if archive.index_for_name(&order_entry).is_some() {
            let order = read_entry(&mut archive, &name, &order_entry, 64)?;
            let order = String::from_utf8_lossy(&order);
            if order.trim() != "little" {
                return Err(bad(
                    &name,
                    format!("byte order `{}` is not supported", order.trim()),
                ));
            }
        }
        let size = stored_entry(&mut archive, &name, &pkl)?.size();
        if size > MAX_PICKLE_BYTES {
            return Err(bad(
                &name,
                format!("{pkl} is {size} bytes, more than {MAX_PICKLE_BYTES} allowed"),
            ));
        }
        let bytes = read_entry(&mut archive, &name, &pkl, MAX_PICKLE_BYTES)?;
        let (tensors, meta) = entries(&name, &bytes)?;
        Ok(Self {
            name,
            archive,
            prefix,
            tensors,
            meta,
        })
    }

    /// The plain values beside the tensors, by dotted key.
    pub fn metadata(&self) -> &BTreeMap<String, Meta> {
        &self.meta
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
        let es = element_size(t.storage.dtype);
        let overflow = || bad(&self.name, format!("tensor `{key}`: its size overflows"));
        let numel = t
            .shape
            .iter()
            .try_fold(1usize, |a, &n| a.checked_mul(n))
            .ok_or_else(overflow)?;
        // One past the furthest element the view touches, in bytes.
        let end = if numel == 0 {
            0
        } else {
            let mut last = t.offset;
            for (&n, &s) in t.shape.iter().zip(&t.stride) {
                let reach = (n - 1).checked_mul(s).ok_or_else(overflow)?;
                last = last.checked_add(reach).ok_or_else(overflow)?;
            }
            last.checked_add(1)
                .and_then(|n| n.checked_mul(es))
                .ok_or_else(overflow)?
        };
        let storage = read_entry(&mut self.archive, &self.name, &entry, end as u64)?;
        if end > storage.len() {
            return Err(bad(
                &self.name,
                format!("tensor `{key}` reaches past its storage {entry}"),
            ));
        }
        // A state dict's tensors never repeat elements of their storage (a stride-0 view
        // could otherwise ask for far more memory than the file holds).
        if numel.saturating_mul(es) > storage.len() {
            return Err(bad(
                &self.name,
                format!("tensor `{key}` has more elements than its storage {entry}"),
            ));
        }
        let mut out = Vec::with_capacity(numel * es);
        if numel > 0 {
            let mut index = vec![0usize; t.shape.len()];
            for _ in 0..numel {
                // In range: bounded by `end`, computed with checks above.
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
    fn reads_nested_state_dicts_and_plain_values() {
        // OSEDiff's layout: state dicts inside the dict, ranks and module lists beside them.
        let mut ckpt = open(include_bytes!("../../../tests/pickle/nested.bin")).unwrap();
        let names: Vec<String> = ckpt.tensors().into_iter().map(|t| t.name).collect();
        assert_eq!(
            names,
            [
                "state_dict_unet.conv_in.base_layer.weight",
                "state_dict_unet.conv_in.lora_A.default_encoder.weight",
                "state_dict_vae.encoder.conv_in.lora_B.default_encoder.weight",
            ]
        );
        let meta = ckpt.metadata();
        assert_eq!(meta["rank_unet"].as_int(), Some(4));
        assert_eq!(
            meta["unet_lora_encoder_modules"].as_strings().unwrap(),
            ["conv_in", "to_q"]
        );
        assert_eq!(
            meta["flags"],
            Meta::List(vec![Meta::Bool(true), Meta::Float(0.5)])
        );
        let (_, shape, data) = ckpt
            .read("state_dict_unet.conv_in.lora_A.default_encoder.weight")
            .unwrap();
        assert_eq!(shape, [4, 3, 3, 3]);
        assert_eq!(data.len(), 4 * 27 * 4);
        // A key that nesting would make twice, and a value that is no plain value: refused.
        let err = open(include_bytes!("../../../tests/pickle/nested_clash.bin"))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("`a.b` appears twice"), "{err}");
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
        let run = |data: &[u8]| Machine::new(data, "p").run();
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

    /// A pickled int of any size (LONG1, 8 bytes).
    fn int(v: u64) -> Vec<u8> {
        let mut b = vec![0x8a, 8];
        b.extend_from_slice(&v.to_le_bytes());
        b
    }

    /// `_rebuild_tensor_v2(('storage', FloatStorage, key, 'cpu', n), offset, size, stride)`.
    fn tensor(storage: &str, offset: u64, size: &[u64], stride: &[u64]) -> Vec<u8> {
        let text = |t: &str| {
            let mut b = vec![b'X'];
            b.extend_from_slice(&(t.len() as u32).to_le_bytes());
            b.extend_from_slice(t.as_bytes());
            b
        };
        let tuple = |items: &[u64]| {
            let mut b = vec![b'('];
            for &i in items {
                b.extend(int(i));
            }
            b.push(b't');
            b
        };
        let mut b = b"ctorch._utils\n_rebuild_tensor_v2\n(".to_vec();
        b.push(b'(');
        b.extend(text("storage"));
        b.extend_from_slice(b"ctorch\nFloatStorage\n");
        b.extend(text(storage));
        b.extend(text("cpu"));
        b.extend(int(4));
        b.extend_from_slice(b"tQ");
        b.extend(int(offset));
        b.extend(tuple(size));
        b.extend(tuple(stride));
        b.extend_from_slice(b"tR");
        b
    }

    /// A torch.save-style archive: `archive/data.pkl` holding a dict of `entries`, and
    /// `archive/data/0` holding four f32 values.
    fn archive(entries: &[(&str, Vec<u8>)], compress: bool) -> Vec<u8> {
        use std::io::Write;
        let mut pkl = b"\x80\x02}(".to_vec();
        for (k, v) in entries {
            pkl.push(b'X');
            pkl.extend_from_slice(&(k.len() as u32).to_le_bytes());
            pkl.extend_from_slice(k.as_bytes());
            pkl.extend_from_slice(v);
        }
        pkl.extend_from_slice(b"u.");
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let stored = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        w.start_file("archive/data.pkl", stored).unwrap();
        w.write_all(&pkl).unwrap();
        w.start_file("archive/data/0", stored).unwrap();
        w.write_all(&[0u8; 16]).unwrap();
        let mut bytes = w.finish().unwrap().into_inner();
        if compress {
            // Mark the storage as deflated in its local and central headers.
            let name = b"archive/data/0";
            let at: Vec<usize> = (0..bytes.len() - name.len())
                .filter(|&i| &bytes[i..i + name.len()] == name)
                .collect();
            for i in at {
                if bytes[i - 30..i - 26] == *b"PK\x03\x04" {
                    bytes[i - 30 + 8] = 8;
                } else if bytes[i - 46..i - 42] == *b"PK\x01\x02" {
                    bytes[i - 46 + 10] = 8;
                }
            }
        }
        bytes
    }

    fn open_owned(bytes: Vec<u8>) -> Result<TorchCheckpoint<Cursor<Vec<u8>>>> {
        TorchCheckpoint::open("test.bin", Cursor::new(bytes))
    }

    #[test]
    fn reads_a_hand_made_archive() {
        let bytes = archive(&[("w", tensor("0", 1, &[3], &[1]))], false);
        let mut c = open_owned(bytes).unwrap();
        let (dtype, shape, data) = c.read("w").unwrap();
        assert_eq!((dtype, shape, data.len()), (Dtype::F32, vec![3], 12));
    }

    #[test]
    fn refuses_duplicate_keys() {
        let t = tensor("0", 0, &[4], &[1]);
        let err = open_owned(archive(&[("w", t.clone()), ("w", t)], false))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("state dict key `w` appears twice"), "{err}");
    }

    #[test]
    fn refuses_views_that_overflow_or_overreach() {
        for (offset, size, stride, want) in [
            (1u64 << 62, vec![4], vec![1], "overflows"),
            (0, vec![1 << 40, 1 << 40], vec![1, 1], "overflows"),
            (0, vec![3], vec![1 << 62], "overflows"),
            (0, vec![2], vec![4], "reaches past its storage"),
            (0, vec![1 << 20], vec![0], "more elements than its storage"),
        ] {
            let bytes = archive(&[("w", tensor("0", offset, &size, &stride))], false);
            let mut c = open_owned(bytes).unwrap();
            let err = c.read("w").unwrap_err().to_string();
            assert!(err.contains(want), "{size:?} {stride:?}: {err}");
        }
    }

    #[test]
    fn refuses_compressed_entries() {
        let bytes = archive(&[("w", tensor("0", 0, &[4], &[1]))], true);
        let mut c = open_owned(bytes).unwrap();
        let err = c.read("w").unwrap_err().to_string();
        assert!(err.contains("archive/data/0"), "{err}");
    }

    #[test]
    fn the_fixture_stays_far_under_the_copy_budget() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/hub/FaithDiff.bin");
        let mut archive = zip::ZipArchive::new(std::fs::File::open(path).unwrap()).unwrap();
        let pkl = archive
            .file_names()
            .find(|n| n.ends_with("data.pkl"))
            .unwrap();
        let pkl = pkl.to_string();
        let data = read_entry(&mut archive, "f", &pkl, MAX_PICKLE_BYTES).unwrap();
        let mut m = Machine::new(&data, "f");
        m.run().unwrap();
        assert!(m.spent * 30 < MAX_COST, "{} of {MAX_COST}", m.spent);
    }

    #[test]
    fn bounds_nesting_and_copies() {
        let run = |data: Vec<u8>| Machine::new(&data, "p").run().map(|_| ()).unwrap_err();
        // `head`, `body` repeated `n` times, `tail`.
        let pickle = |head: &[u8], body: &[u8], n: usize, tail: &[u8]| {
            [head, &body.repeat(n), tail].concat()
        };
        // 300,000 nested one-tuples (once a stack overflow when dropped).
        let deep = pickle(b"\x80\x02]", b"\x85", 300_000, b".");
        assert!(run(deep).to_string().contains("nested more than 64"));
        // DUP + TUPLE2 doubles the value 40 times: 2^40 values from 83 bytes.
        let dup = pickle(b"\x80\x02]", b"2\x86", 40, b".");
        assert!(run(dup).to_string().contains("a memory bomb"));
        // The same through the memo: BINGET twice, TUPLE2, BINPUT.
        let memo = pickle(b"\x80\x02]q\x00", b"h\x00h\x00\x86q\x00", 40, b".");
        assert!(run(memo).to_string().contains("a memory bomb"));
        // A wide but shallow list of a million ints is fine.
        let wide = pickle(b"\x80\x02](", b"K\x01", 1_000_000, b"e.");
        assert!(Machine::new(&wide, "p").run().is_ok());
    }
}
