//! Parses the subset of PTX that `kernels/*.ptx` is written in into functions of decoded
//! instructions: `.entry` and `.func` definitions with their `.param` lists, `.reg`
//! declarations, module-scope `.shared` arrays, labels, guards, scoped `.param` blocks around
//! calls, and the instructions listed in [`Op`]. Anything else is an error naming the line, so
//! a kernel using an instruction the simulator does not model fails loudly instead of running
//! with made-up semantics.

use std::collections::HashMap;

/// A scalar type suffix of an instruction or a `.param`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ty {
    U16,
    B16,
    U32,
    S32,
    B32,
    U64,
    S64,
    B64,
    F32,
    F64,
    Pred,
}

impl Ty {
    fn parse(s: &str) -> Option<Ty> {
        Some(match s {
            "u16" => Ty::U16,
            "b16" => Ty::B16,
            "u32" => Ty::U32,
            "s32" => Ty::S32,
            "b32" => Ty::B32,
            "u64" => Ty::U64,
            "s64" => Ty::S64,
            "b64" => Ty::B64,
            "f32" => Ty::F32,
            "f64" => Ty::F64,
            "pred" => Ty::Pred,
            _ => return None,
        })
    }

    /// Size in bytes in memory.
    pub fn bytes(self) -> usize {
        match self {
            Ty::U16 | Ty::B16 => 2,
            Ty::U32 | Ty::S32 | Ty::B32 | Ty::F32 | Ty::Pred => 4,
            Ty::U64 | Ty::S64 | Ty::B64 | Ty::F64 => 8,
        }
    }
}

/// A comparison of `setp`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    /// Unordered variants (true when either operand is NaN).
    Equ,
    Neu,
    Ltu,
    Leu,
    Gtu,
    Geu,
    Nan,
    Num,
}

/// A state space of a load or store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Space {
    Global,
    Shared,
    Param,
}

/// The rounding of a `cvt` that changes between integer and float, or float to float.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Round {
    /// No rounding modifier (exact conversions, or integer to integer).
    None,
    Rn,
    Rz,
    Rm,
    Rp,
    /// Round to an integral value: `.rni`, `.rzi`, `.rmi`, `.rpi`.
    Rni,
    Rzi,
    Rmi,
    Rpi,
}

/// A decoded operation. Arithmetic carries its operand type; rounding modifiers of float
/// arithmetic (`.rn`) are the IEEE default the simulator uses anyway and are checked, not kept.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    Mov(Ty),
    Add(Ty),
    Sub(Ty),
    Mul(Ty),
    MulLo(Ty),
    MulWide(Ty),
    MadLo(Ty),
    Fma(Ty),
    Div(Ty),
    Rem(Ty),
    Min(Ty),
    Max(Ty),
    Abs(Ty),
    Neg(Ty),
    Sqrt(Ty),
    Rcp(Ty),
    And(Ty),
    Or(Ty),
    Xor(Ty),
    Shl(Ty),
    Shr(Ty),
    Setp(Cmp, Ty),
    Selp(Ty),
    /// `cvt.round.dst.src`.
    Cvt {
        dst: Ty,
        src: Ty,
        round: Round,
    },
    Cvta,
    Ld {
        space: Space,
        ty: Ty,
        vec: usize,
        /// `.nc`: through the read-only (non-coherent) cache.
        nc: bool,
    },
    St {
        space: Space,
        ty: Ty,
        vec: usize,
    },
    /// `red.global.add.f32` and `atom.global.{add,or}` (the latter returns the old value).
    Atomic {
        op: AtomOp,
        ty: Ty,
        returns: bool,
    },
    Bra,
    Call,
    Ret,
    BarSync,
    ShflDown,
    /// The end of a `{ }` block in a function body: its `.param` variables (the operand, a
    /// `ParamList`) cease to exist. Not a PTX instruction; the parser emits it.
    EndScope,
}

/// The operation of an atomic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AtomOp {
    Add,
    Or,
}

/// A special register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Special {
    Tid(usize),
    Ntid(usize),
    Ctaid(usize),
    Nctaid(usize),
}

/// The base of an address operand `[base+offset]`.
#[derive(Clone, Debug, PartialEq)]
pub enum AddrBase {
    Reg(usize),
    /// A `.param` (entry, function or call-scoped) or a module `.shared` array, by name.
    Symbol(String),
}

/// An operand.
#[derive(Clone, Debug, PartialEq)]
pub enum Operand {
    Reg(usize),
    /// `%p1|%p2`: setp's two results (the second is the negation of the first).
    RegPair(usize, usize),
    /// An integer or float literal, as written: the integer value, or the float's bits with its width.
    Int(i64),
    F32Bits(u32),
    F64Bits(u64),
    Special(Special),
    /// A bare name: a label (bra), a function (call), a `.shared` array (mov takes its address).
    Name(String),
    /// A parenthesised list of `.param` names (call's results and arguments).
    ParamList(Vec<String>),
    Addr(AddrBase, i64),
    Vector(Vec<usize>),
}

/// One instruction with its guard and source line.
#[derive(Clone, Debug)]
pub struct Inst {
    /// `@%p` (false) or `@!%p` (true): the register and whether it is negated.
    pub guard: Option<(usize, bool)>,
    pub op: Op,
    pub operands: Vec<Operand>,
    /// 1-based line in the PTX file, for error messages.
    pub line: usize,
    /// The instruction as written, for error messages.
    pub text: String,
}

/// A declared `.param` of an entry or function.
#[derive(Clone, Debug)]
pub struct Param {
    pub name: String,
    pub ty: Ty,
}

/// One `.entry` or `.func`.
#[derive(Clone, Debug)]
pub struct Function {
    pub name: String,
    pub is_entry: bool,
    pub params: Vec<Param>,
    /// The `.func`'s return parameter, if any.
    pub ret: Option<Param>,
    /// Number of registers (every `.reg` name of the function gets an index).
    pub nregs: usize,
    pub body: Vec<Inst>,
    /// Label name -> index in `body` of the instruction that follows it.
    pub labels: HashMap<String, usize>,
}

/// A module-scope `.shared` array.
#[derive(Clone, Debug)]
pub struct Shared {
    pub name: String,
    pub bytes: usize,
    pub align: usize,
}

/// A parsed `.ptx` file.
#[derive(Clone, Debug)]
pub struct Module {
    pub functions: HashMap<String, Function>,
    pub shared: Vec<Shared>,
}

/// A parse error, with the 1-based line.
#[derive(Debug)]
pub struct ParseError {
    pub line: usize,
    pub message: String,
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.message)
    }
}

type PResult<T> = Result<T, ParseError>;

fn err<T>(line: usize, message: impl Into<String>) -> PResult<T> {
    Err(ParseError { line, message: message.into() })
}

/// A statement of the file: text up to `;`, `{` or `}` (the terminator kept), with its line.
struct Stmt {
    text: String,
    term: char,
    line: usize,
}

fn statements(src: &str) -> Vec<Stmt> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut start_line = 1;
    let mut line = 1;
    // Braces inside an instruction (`{%r1, %r2}`) are vector operands, not blocks: a `{` opens a
    // block only at the start of a statement or after a header (which starts with a directive).
    let mut vector_depth = 0;
    for raw in src.lines() {
        let code = raw.split("//").next().unwrap_or("");
        // `.version`, `.target` and `.address_size` end at the line, without `;` (ptxas checks them).
        let t = code.trim_start();
        if t.starts_with(".version") || t.starts_with(".target") || t.starts_with(".address_size") {
            line += 1;
            continue;
        }
        for ch in code.chars() {
            if cur.trim().is_empty() {
                start_line = line;
            }
            let (_, head) = split_labels(&cur);
            let in_instruction = !head.is_empty() && !head.starts_with('.');
            match ch {
                '{' if in_instruction => {
                    vector_depth += 1;
                    cur.push(ch);
                }
                '}' if vector_depth > 0 => {
                    vector_depth -= 1;
                    cur.push(ch);
                }
                ';' | '{' | '}' => {
                    out.push(Stmt { text: cur.trim().to_string(), term: ch, line: start_line });
                    cur.clear();
                }
                _ => cur.push(ch),
            }
        }
        cur.push(' ');
        line += 1;
    }
    out
}

/// Splits leading `name:` labels off a statement.
fn split_labels(text: &str) -> (Vec<String>, &str) {
    let mut labels = Vec::new();
    let mut rest = text.trim();
    while let Some(colon) = rest.find(':') {
        let head = &rest[..colon];
        if !head.is_empty() && head.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$') {
            labels.push(head.to_string());
            rest = rest[colon + 1..].trim();
        } else {
            break;
        }
    }
    (labels, rest)
}

/// Parses `.param .u64 name` (an entry or function parameter).
fn parse_param(s: &str, line: usize) -> PResult<Param> {
    let words: Vec<&str> = s.split_whitespace().collect();
    match words.as_slice() {
        [".param", ty, name] => match Ty::parse(ty.trim_start_matches('.')) {
            Some(ty) => Ok(Param { name: name.to_string(), ty }),
            None => err(line, format!("unknown parameter type in `{s}`")),
        },
        _ => err(line, format!("cannot parse parameter `{s}`")),
    }
}

fn parse_param_list(s: &str, line: usize) -> PResult<Vec<Param>> {
    s.split(',').map(str::trim).filter(|p| !p.is_empty()).map(|p| parse_param(p, line)).collect()
}

/// Parses a function header: `.visible .entry name(params)` or `.func (.param ret) name(params)`.
fn parse_header(text: &str, line: usize) -> PResult<(String, bool, Vec<Param>, Option<Param>)> {
    let t = text.trim();
    if let Some(rest) = t.strip_prefix(".visible .entry").or_else(|| t.strip_prefix(".entry")) {
        let open = rest.find('(').ok_or(ParseError { line, message: "entry without a parameter list".into() })?;
        let close = rest.rfind(')').ok_or(ParseError { line, message: "unclosed parameter list".into() })?;
        let name = rest[..open].trim().to_string();
        return Ok((name, true, parse_param_list(&rest[open + 1..close], line)?, None));
    }
    if let Some(rest) = t.strip_prefix(".func") {
        let rest = rest.trim();
        let (ret, rest) = if let Some(r) = rest.strip_prefix('(') {
            let close = r.find(')').ok_or(ParseError { line, message: "unclosed return list".into() })?;
            (Some(parse_param(r[..close].trim(), line)?), r[close + 1..].trim())
        } else {
            (None, rest)
        };
        let open = rest.find('(').ok_or(ParseError { line, message: "function without a parameter list".into() })?;
        let close = rest.rfind(')').ok_or(ParseError { line, message: "unclosed parameter list".into() })?;
        let name = rest[..open].trim().to_string();
        return Ok((name, false, parse_param_list(&rest[open + 1..close], line)?, ret));
    }
    err(line, format!("unsupported block header `{t}`"))
}

/// Registers of a function: `.reg .b32 %r<12>` declares %r0..%r11; `.reg .f32 %x` one register.
struct Regs {
    index: HashMap<String, usize>,
}

impl Regs {
    fn declare(&mut self, decl: &str, line: usize) -> PResult<()> {
        let words: Vec<&str> = decl.split_whitespace().collect();
        let names = match words.as_slice() {
            [".reg", _ty, rest @ ..] => rest.join(" "),
            _ => return err(line, format!("cannot parse `{decl}`")),
        };
        for name in names.split(',').map(str::trim) {
            if let Some(open) = name.find('<') {
                let base = &name[..open];
                let n: usize = name[open + 1..name.len() - 1]
                    .parse()
                    .map_err(|_| ParseError { line, message: format!("bad register range `{name}`") })?;
                for i in 0..n {
                    self.add(format!("{base}{i}"));
                }
            } else {
                self.add(name.to_string());
            }
        }
        Ok(())
    }

    fn add(&mut self, name: String) {
        let next = self.index.len();
        self.index.entry(name).or_insert(next);
    }

    fn get(&self, name: &str, line: usize) -> PResult<usize> {
        match self.index.get(name) {
            Some(&i) => Ok(i),
            None => err(line, format!("undeclared register `{name}`")),
        }
    }
}

fn parse_int(s: &str) -> Option<i64> {
    let (neg, digits) = match s.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, s),
    };
    let v = if let Some(h) = digits.strip_prefix("0x").or_else(|| digits.strip_prefix("0X")) {
        i64::from_str_radix(h, 16).ok().or_else(|| u64::from_str_radix(h, 16).ok().map(|u| u as i64))?
    } else {
        digits.parse::<i64>().ok()?
    };
    Some(if neg { -v } else { v })
}

fn parse_operand(s: &str, regs: &Regs, line: usize) -> PResult<Operand> {
    let s = s.trim();
    if let Some(inner) = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        let inner = inner.trim();
        let (base, off) = match inner.find('+') {
            Some(plus) => {
                let off =
                    parse_int(inner[plus + 1..].trim()).ok_or(ParseError { line, message: format!("bad address offset in `{s}`") })?;
                (inner[..plus].trim(), off)
            }
            None => (inner, 0),
        };
        let base = if base.starts_with('%') { AddrBase::Reg(regs.get(base, line)?) } else { AddrBase::Symbol(base.to_string()) };
        return Ok(Operand::Addr(base, off));
    }
    if let Some(inner) = s.strip_prefix('{').and_then(|r| r.strip_suffix('}')) {
        let regs = inner.split(',').map(|r| regs.get(r.trim(), line)).collect::<PResult<Vec<_>>>()?;
        return Ok(Operand::Vector(regs));
    }
    if let Some(inner) = s.strip_prefix('(').and_then(|r| r.strip_suffix(')')) {
        return Ok(Operand::ParamList(inner.split(',').map(|p| p.trim().to_string()).filter(|p| !p.is_empty()).collect()));
    }
    if let Some((a, b)) = s.split_once('|') {
        return Ok(Operand::RegPair(regs.get(a.trim(), line)?, regs.get(b.trim(), line)?));
    }
    if let Some(sp) = s.strip_prefix('%') {
        let special = |name: &str| -> Option<Special> {
            let (base, axis) = name.split_once('.')?;
            let axis = match axis {
                "x" => 0,
                "y" => 1,
                "z" => 2,
                _ => return None,
            };
            Some(match base {
                "tid" => Special::Tid(axis),
                "ntid" => Special::Ntid(axis),
                "ctaid" => Special::Ctaid(axis),
                "nctaid" => Special::Nctaid(axis),
                _ => return None,
            })
        };
        if let Some(sp) = special(sp) {
            return Ok(Operand::Special(sp));
        }
        return Ok(Operand::Reg(regs.get(s, line)?));
    }
    if let Some(h) = s.strip_prefix("0f").or_else(|| s.strip_prefix("0F")) {
        if h.len() == 8 {
            if let Ok(bits) = u32::from_str_radix(h, 16) {
                return Ok(Operand::F32Bits(bits));
            }
        }
    }
    if let Some(h) = s.strip_prefix("0d").or_else(|| s.strip_prefix("0D")) {
        if h.len() == 16 {
            if let Ok(bits) = u64::from_str_radix(h, 16) {
                return Ok(Operand::F64Bits(bits));
            }
        }
    }
    if let Some(v) = parse_int(s) {
        return Ok(Operand::Int(v));
    }
    if s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$') && !s.is_empty() {
        return Ok(Operand::Name(s.to_string()));
    }
    err(line, format!("cannot parse operand `{s}`"))
}

/// Splits operands at top-level commas (not inside `{}`, `()` or `[]`).
fn split_operands(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut cur = String::new();
    for ch in s.chars() {
        match ch {
            '{' | '(' | '[' => depth += 1,
            '}' | ')' | ']' => depth -= 1,
            _ => {}
        }
        if ch == ',' && depth == 0 {
            out.push(cur.trim().to_string());
            cur.clear();
        } else {
            cur.push(ch);
        }
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_string());
    }
    out
}

fn decode(opcode: &str, line: usize) -> PResult<Op> {
    let parts: Vec<&str> = opcode.split('.').collect();
    let bad = || ParseError { line, message: format!("instruction `{opcode}` is not modelled by the simulator") };
    let last_ty = || parts.last().and_then(|t| Ty::parse(t)).ok_or_else(bad);
    // Float arithmetic must say .rn (the only rounding modelled); integer arithmetic has none.
    let float_rn = |ty: Ty| -> PResult<()> {
        let is_float = matches!(ty, Ty::F32 | Ty::F64);
        let has_rn = parts.contains(&"rn");
        if is_float && !has_rn || !is_float && has_rn || parts.contains(&"ftz") || parts.contains(&"sat") {
            return Err(bad());
        }
        Ok(())
    };
    let op = match parts[0] {
        "mov" => Op::Mov(last_ty()?),
        "add" | "sub" | "mul" if parts.len() == 2 => {
            let ty = last_ty()?;
            if matches!(ty, Ty::F32 | Ty::F64) {
                return Err(bad());
            }
            match parts[0] {
                "add" => Op::Add(ty),
                "sub" => Op::Sub(ty),
                _ => return Err(bad()),
            }
        }
        "add" | "sub" | "mul" if parts.len() == 3 && parts[1] == "rn" => {
            let ty = last_ty()?;
            float_rn(ty)?;
            match parts[0] {
                "add" => Op::Add(ty),
                "sub" => Op::Sub(ty),
                _ => Op::Mul(ty),
            }
        }
        "mul" if parts.len() == 3 && parts[1] == "lo" => Op::MulLo(last_ty()?),
        "mul" if parts.len() == 3 && parts[1] == "wide" => Op::MulWide(last_ty()?),
        "mad" if parts.len() == 3 && parts[1] == "lo" => Op::MadLo(last_ty()?),
        "fma" => {
            let ty = last_ty()?;
            float_rn(ty)?;
            Op::Fma(ty)
        }
        "div" => {
            let ty = last_ty()?;
            float_rn(ty)?;
            Op::Div(ty)
        }
        "rem" => Op::Rem(last_ty()?),
        "min" | "max" => {
            let ty = last_ty()?;
            if parts.len() != 2 {
                return Err(bad());
            }
            if parts[0] == "min" {
                Op::Min(ty)
            } else {
                Op::Max(ty)
            }
        }
        "abs" if parts.len() == 2 => Op::Abs(last_ty()?),
        "neg" if parts.len() == 2 => Op::Neg(last_ty()?),
        "sqrt" => {
            let ty = last_ty()?;
            float_rn(ty)?;
            Op::Sqrt(ty)
        }
        "rcp" => {
            let ty = last_ty()?;
            float_rn(ty)?;
            Op::Rcp(ty)
        }
        "and" => Op::And(last_ty()?),
        "or" => Op::Or(last_ty()?),
        "xor" => Op::Xor(last_ty()?),
        "shl" => Op::Shl(last_ty()?),
        "shr" => Op::Shr(last_ty()?),
        "setp" if parts.len() == 3 => {
            let cmp = match parts[1] {
                "eq" => Cmp::Eq,
                "ne" => Cmp::Ne,
                "lt" | "lo" => Cmp::Lt,
                "le" | "ls" => Cmp::Le,
                "gt" | "hi" => Cmp::Gt,
                "ge" | "hs" => Cmp::Ge,
                "equ" => Cmp::Equ,
                "neu" => Cmp::Neu,
                "ltu" => Cmp::Ltu,
                "leu" => Cmp::Leu,
                "gtu" => Cmp::Gtu,
                "geu" => Cmp::Geu,
                "nan" => Cmp::Nan,
                "num" => Cmp::Num,
                _ => return Err(bad()),
            };
            Op::Setp(cmp, last_ty()?)
        }
        "selp" => Op::Selp(last_ty()?),
        "cvt" => {
            let tys: Vec<Ty> = parts[1..].iter().filter_map(|p| Ty::parse(p)).collect();
            let mods: Vec<&str> = parts[1..].iter().copied().filter(|p| Ty::parse(p).is_none()).collect();
            let round = match mods.as_slice() {
                [] => Round::None,
                ["rn"] => Round::Rn,
                ["rz"] => Round::Rz,
                ["rm"] => Round::Rm,
                ["rp"] => Round::Rp,
                ["rni"] => Round::Rni,
                ["rzi"] => Round::Rzi,
                ["rmi"] => Round::Rmi,
                ["rpi"] => Round::Rpi,
                _ => return Err(bad()),
            };
            match tys.as_slice() {
                [dst, src] => Op::Cvt { dst: *dst, src: *src, round },
                _ => return Err(bad()),
            }
        }
        "cvta" if opcode == "cvta.to.global.u64" => Op::Cvta,
        "ld" | "st" => {
            let space = match parts.get(1) {
                Some(&"global") => Space::Global,
                Some(&"shared") => Space::Shared,
                Some(&"param") => Space::Param,
                _ => return Err(bad()),
            };
            let vec = if parts.contains(&"v4") {
                4
            } else if parts.contains(&"v2") {
                2
            } else {
                1
            };
            let known = |p: &&str| matches!(*p, "ld" | "st" | "global" | "shared" | "param" | "nc" | "v2" | "v4") || Ty::parse(p).is_some();
            if !parts.iter().all(known) || (parts.contains(&"nc") && parts[0] != "ld") {
                return Err(bad());
            }
            let ty = last_ty()?;
            if parts[0] == "ld" {
                Op::Ld { space, ty, vec, nc: parts.contains(&"nc") }
            } else {
                Op::St { space, ty, vec }
            }
        }
        "red" | "atom" if parts.get(1) == Some(&"global") && parts.len() == 4 => {
            let op = match parts[2] {
                "add" => AtomOp::Add,
                "or" => AtomOp::Or,
                _ => return Err(bad()),
            };
            Op::Atomic { op, ty: last_ty()?, returns: parts[0] == "atom" }
        }
        "bra" => Op::Bra,
        "call" => Op::Call,
        "ret" => Op::Ret,
        "bar" if opcode == "bar.sync" => Op::BarSync,
        "shfl" if opcode == "shfl.sync.down.b32" => Op::ShflDown,
        _ => return Err(bad()),
    };
    Ok(op)
}

fn parse_instruction(text: &str, regs: &Regs, line: usize) -> PResult<Inst> {
    let mut rest = text.trim();
    let mut guard = None;
    if let Some(g) = rest.strip_prefix('@') {
        let end = g.find(char::is_whitespace).ok_or(ParseError { line, message: "guard without instruction".into() })?;
        let name = &g[..end];
        let (neg, name) = match name.strip_prefix('!') {
            Some(n) => (true, n),
            None => (false, name),
        };
        guard = Some((regs.get(name, line)?, neg));
        rest = g[end..].trim();
    }
    let (opcode, ops) = match rest.find(char::is_whitespace) {
        Some(i) => (&rest[..i], rest[i..].trim()),
        None => (rest, ""),
    };
    let op = decode(opcode, line)?;
    let operands = split_operands(ops).iter().map(|o| parse_operand(o, regs, line)).collect::<PResult<Vec<_>>>()?;
    Ok(Inst { guard, op, operands, line, text: rest.to_string() })
}

impl Module {
    /// Parses a whole `.ptx` file.
    pub fn parse(src: &str) -> Result<Module, ParseError> {
        let stmts = statements(src);
        let mut functions = HashMap::new();
        let mut shared = Vec::new();
        let mut i = 0;
        while i < stmts.len() {
            let s = &stmts[i];
            if s.text.is_empty() && s.term != '{' {
                i += 1;
                continue;
            }
            match s.term {
                ';' => {
                    let t = s.text.as_str();
                    if t.starts_with(".version") || t.starts_with(".target") || t.starts_with(".address_size") {
                        // Checked by ptxas (kernels/check.sh), not here.
                    } else if let Some(decl) = t.strip_prefix(".shared") {
                        shared.push(parse_shared(decl, s.line)?);
                    } else if t.starts_with(".func") {
                        // A prototype; the definition follows.
                    } else {
                        return err(s.line, format!("unsupported module-scope statement `{t}`"));
                    }
                    i += 1;
                }
                '{' => {
                    let (name, is_entry, params, ret) = parse_header(&s.text, s.line)?;
                    let (f, next) = parse_body(&stmts, i + 1, name.clone(), is_entry, params, ret)?;
                    functions.insert(name, f);
                    i = next;
                }
                _ => return err(s.line, "unbalanced `}`"),
            }
        }
        Ok(Module { functions, shared })
    }
}

fn parse_shared(decl: &str, line: usize) -> PResult<Shared> {
    // ` .align 8 .f64 name[32]`
    let words: Vec<&str> = decl.split_whitespace().collect();
    let (align, ty, name) = match words.as_slice() {
        [".align", a, ty, name] => (a.parse().unwrap_or(0), *ty, *name),
        [ty, name] => (0, *ty, *name),
        _ => return err(line, format!("cannot parse `.shared{decl}`")),
    };
    let ty = Ty::parse(ty.trim_start_matches('.')).or(if ty == ".b8" { Some(Ty::U16) } else { None });
    let elem = if words.contains(&".b8") { 1 } else { ty.map(Ty::bytes).unwrap_or(0) };
    let open = name.find('[').ok_or(ParseError { line, message: "shared array without a size".into() })?;
    let n: usize = name[open + 1..name.len() - 1].parse().map_err(|_| ParseError { line, message: "bad shared size".into() })?;
    Ok(Shared { name: name[..open].to_string(), bytes: n * elem, align: align.max(elem) })
}

/// Parses a function body from statement `start` (just after its `{`) to the matching `}`;
/// returns the function and the index of the statement after it.
fn parse_body(
    stmts: &[Stmt],
    start: usize,
    name: String,
    is_entry: bool,
    params: Vec<Param>,
    ret: Option<Param>,
) -> PResult<(Function, usize)> {
    // First pass: registers (declarations may come anywhere before use; collect them all).
    let mut regs = Regs { index: HashMap::new() };
    let mut depth = 1;
    let mut end = start;
    while end < stmts.len() {
        let s = &stmts[end];
        match s.term {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    break;
                }
            }
            _ => {
                let (_, t) = split_labels(&s.text);
                if t.starts_with(".reg") {
                    regs.declare(t, s.line)?;
                }
            }
        }
        end += 1;
    }
    if depth != 0 {
        return err(stmts[start.saturating_sub(1)].line, format!("function `{name}` is not closed"));
    }
    let mut body = Vec::new();
    let mut labels = HashMap::new();
    // The `.param` names declared by each open `{ }` block: a call's arguments and results.
    // They are created when first stored and die at the block's end (an `EndScope`), so a
    // later block that reads one before storing it fails instead of seeing a stale value.
    let mut scopes: Vec<Vec<String>> = Vec::new();
    for s in &stmts[start..end] {
        let (ls, t) = split_labels(&s.text);
        for l in ls {
            labels.insert(l, body.len());
        }
        match s.term {
            '{' => {
                scopes.push(Vec::new());
                continue;
            }
            '}' => {
                let names = scopes.pop().unwrap_or_default();
                if !names.is_empty() {
                    body.push(Inst {
                        guard: None,
                        op: Op::EndScope,
                        operands: vec![Operand::ParamList(names)],
                        line: s.line,
                        text: "}".into(),
                    });
                }
                continue;
            }
            _ => {}
        }
        if let Some(decl) = t.strip_prefix(".param") {
            let name = decl.split_whitespace().last().unwrap_or("").to_string();
            match scopes.last_mut() {
                Some(scope) => scope.push(name),
                None => return err(s.line, format!("`.param` outside a call block: `{t}`")),
            }
            continue;
        }
        if t.is_empty() || t.starts_with(".reg") {
            continue;
        }
        if t.starts_with('.') {
            return err(s.line, format!("unsupported directive in a function body: `{t}`"));
        }
        body.push(parse_instruction(t, &regs, s.line)?);
    }
    // Branch targets become instruction indices.
    for inst in &mut body {
        if inst.op == Op::Bra {
            match inst.operands.as_slice() {
                [Operand::Name(label)] => match labels.get(label) {
                    Some(&target) => inst.operands = vec![Operand::Int(target as i64)],
                    None => return err(inst.line, format!("branch to undefined label `{label}`")),
                },
                _ => return err(inst.line, "bra takes one label"),
            }
        }
    }
    let nregs = regs.index.len();
    Ok((Function { name, is_entry, params, ret, nregs, body, labels }, end + 1))
}
