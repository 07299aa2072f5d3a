//! Runs a parsed kernel over a grid, one thread at a time, on a simulated device memory.
//!
//! Each block's threads run in turn until they reach a collective (`bar.sync` or
//! `shfl.sync`) or exit; a collective runs once every thread it needs has reached it. This is
//! one legal interleaving of a race-free kernel, so results are those of the GPU for any kernel
//! whose result does not depend on scheduling (the engine's all are, except the order of
//! `red.global.add` — sequential here, which is one of the orders a GPU may take).
//!
//! Everything a GPU would let slide is an error here, naming the kernel, block, thread and PTX
//! line: a load or store outside every allocation or misaligned, a register read before it was
//! written, a `shfl.sync` whose full-warp member mask does not match the lanes that reach it, a
//! barrier that some threads never reach, an integer division by zero, a launch shape over the
//! hardware's limits, a parameter list that does not match the entry's `.param`s, and a data race
//! on global or shared memory (a location that one thread of the launch writes and another reads
//! or writes, with neither atomics nor a barrier of their block between them), tracked per byte
//! whatever order the simulator happened to run the threads in.

use std::collections::HashMap;
use std::rc::Rc;

use super::arith::{binary, compare, convert, f32_of, f64_of, ftz, int_of, mask};
use super::memory::{le, set_le, shared_offset, track, Access, Mark, Memory, ATOMICS, SHARED_BASE};
use super::parse::{AddrBase, AtomOp, Function, Inst, Module, Op, Operand, Space, Special, Ty};
use super::profile::{Kind, Profile, Recorder};

/// A kernel argument, as the host passes it (`PushKernelArg` in cudarc).
#[derive(Clone, Copy, Debug)]
pub enum Arg {
    U32(u32),
    U64(u64),
    F32(f32),
    F64(f64),
}

impl Arg {
    fn bits(self) -> u64 {
        match self {
            Arg::U32(v) => v as u64,
            Arg::U64(v) => v,
            Arg::F32(v) => v.to_bits() as u64,
            Arg::F64(v) => v.to_bits(),
        }
    }

    fn matches(self, ty: Ty) -> bool {
        matches!(
            (self, ty),
            (Arg::U32(_), Ty::U32 | Ty::S32 | Ty::B32)
                | (Arg::U64(_), Ty::U64 | Ty::S64 | Ty::B64)
                | (Arg::F32(_), Ty::F32)
                | (Arg::F64(_), Ty::F64)
        )
    }
}

/// A launch's grid and block dimensions.
#[derive(Clone, Copy, Debug)]
pub struct Dims {
    pub grid: (u32, u32, u32),
    pub block: (u32, u32, u32),
}

/// What went wrong, and where.
#[derive(Debug)]
pub struct SimError(pub String);

impl std::fmt::Display for SimError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Counters of one launch.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    /// Instructions executed, over all threads.
    pub instructions: u64,
    pub global_loads: u64,
    pub global_stores: u64,
    pub atomics: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Ready,
    /// Stopped at a collective (the instruction at the top frame's pc, not yet executed).
    Waiting,
    Exited,
}

struct Frame<'m> {
    func: &'m Function,
    pc: usize,
    regs: Vec<u64>,
    written: Vec<bool>,
    /// `.param` variables by name: the entry's or function's own, and those of call blocks.
    /// Shared by every thread's entry frame until one writes (copy on write).
    params: Rc<HashMap<String, u64>>,
    /// Where the caller wants this call's result: the caller's param name.
    result_into: Option<String>,
}

struct Thread<'m> {
    tid: (u32, u32, u32),
    linear: u32,
    frames: Vec<Frame<'m>>,
    state: State,
    /// Instructions this thread has executed (see [`MAX_INSTRUCTIONS_PER_THREAD`]).
    executed: u64,
    /// When profiling: how many times this thread has run each memory instruction (keyed by
    /// the instruction's address), so that the n-th run of an instruction by every lane of a
    /// warp is taken for one warp-wide request.
    visits: HashMap<usize, u32>,
}

/// A thread that runs this many instructions is taken for stuck in a loop: an error, not a hang.
const MAX_INSTRUCTIONS_PER_THREAD: u64 = 10_000_000;

struct Block {
    ctaid: (u32, u32, u32),
    /// The block's index in the grid, x fastest.
    linear: u64,
    shared: Vec<u8>,
    /// Per shared byte since the last barrier: who wrote and read it (see [`track`]).
    shared_writer: Vec<Mark>,
    /// Per shared byte: whether any thread of the block wrote it (shared memory starts
    /// undefined on a GPU: reading a byte nobody wrote is an error, not a zero).
    shared_written: Vec<bool>,
    shared_reader: Vec<Mark>,
    /// Barriers the block has passed: accesses in different epochs are ordered.
    epoch: u32,
    /// The memory requests of the block's warps, when profiling.
    recorder: Option<Recorder>,
}

/// A loaded module: parsed functions and the layout of its `.shared` arrays.
pub struct Kernels {
    module: Module,
    shared_offsets: HashMap<String, u64>,
    shared_bytes: usize,
}

impl Kernels {
    pub fn new(module: Module) -> Kernels {
        let mut shared_offsets = HashMap::new();
        let mut at = 0usize;
        for s in &module.shared {
            at = at.next_multiple_of(s.align.max(1));
            shared_offsets.insert(s.name.clone(), SHARED_BASE + at as u64);
            at += s.bytes;
        }
        Kernels { module, shared_offsets, shared_bytes: at }
    }

    /// Runs `entry` over `dims` with `args` against `memory`.
    pub fn launch(&self, memory: &mut Memory, entry: &str, dims: Dims, args: &[Arg]) -> Result<Stats, SimError> {
        Ok(self.launch_impl(memory, entry, dims, args, false)?.stats)
    }

    /// [`Kernels::launch`], also measuring how the warps access memory (see [`Profile`]).
    pub fn launch_profiled(&self, memory: &mut Memory, entry: &str, dims: Dims, args: &[Arg]) -> Result<Profile, SimError> {
        self.launch_impl(memory, entry, dims, args, true)
    }

    fn launch_impl(&self, memory: &mut Memory, entry: &str, dims: Dims, args: &[Arg], profile: bool) -> Result<Profile, SimError> {
        let func = self.module.functions.get(entry).filter(|f| f.is_entry).ok_or_else(|| SimError(format!("no entry `{entry}`")))?;
        if func.params.len() != args.len() {
            return Err(SimError(format!("{entry}: {} arguments for {} parameters", args.len(), func.params.len())));
        }
        let mut params = HashMap::new();
        for (i, (p, a)) in func.params.iter().zip(args).enumerate() {
            if !a.matches(p.ty) {
                return Err(SimError(format!("{entry}: argument {i} ({}) is {a:?}, the parameter is .{:?}", p.name, p.ty)));
            }
            params.insert(p.name.clone(), a.bits());
        }
        let params = Rc::new(params);
        let Dims { grid, block } = dims;
        let threads = block.0 as u64 * block.1 as u64 * block.2 as u64;
        if threads == 0
            || threads > 1024
            || block.2 > 64
            || grid.0 == 0
            || grid.1 == 0
            || grid.2 == 0
            || grid.1 > 65535
            || grid.2 > 65535
            || grid.0 > i32::MAX as u32
        {
            return Err(SimError(format!("{entry}: launch shape {dims:?} is outside the hardware's limits")));
        }
        memory.begin_launch();
        let mut stats = Stats::default();
        let mut totals = Profile::default();
        for bz in 0..grid.2 {
            for by in 0..grid.1 {
                for bx in 0..grid.0 {
                    let linear = bx as u64 + grid.0 as u64 * (by as u64 + grid.1 as u64 * bz as u64);
                    let n = self.shared_bytes;
                    let mut b = Block {
                        ctaid: (bx, by, bz),
                        linear,
                        shared: vec![0u8; n],
                        shared_writer: vec![Mark::default(); n],
                        shared_written: vec![false; n],
                        shared_reader: vec![Mark::default(); n],
                        epoch: 0,
                        recorder: profile.then(Recorder::default),
                    };
                    self.run_block(memory, func, &params, dims, &mut b, &mut stats)
                        .map_err(|e| SimError(format!("{entry}, block {:?}: {}", b.ctaid, e.0)))?;
                    if let Some(r) = b.recorder.take() {
                        r.add_to(&mut totals);
                    }
                }
            }
        }
        totals.stats = stats;
        Ok(totals)
    }

    fn run_block<'m>(
        &'m self,
        memory: &mut Memory,
        func: &'m Function,
        params: &Rc<HashMap<String, u64>>,
        dims: Dims,
        b: &mut Block,
        stats: &mut Stats,
    ) -> Result<(), SimError> {
        let (bx, by, bz) = dims.block;
        let mut threads: Vec<Thread<'m>> = Vec::with_capacity((bx * by * bz) as usize);
        for z in 0..bz {
            for y in 0..by {
                for x in 0..bx {
                    let linear = x + bx * (y + by * z);
                    let frame = Frame {
                        func,
                        pc: 0,
                        regs: vec![0; func.nregs],
                        written: vec![false; func.nregs],
                        params: Rc::clone(params),
                        result_into: None,
                    };
                    threads.push(Thread {
                        tid: (x, y, z),
                        linear,
                        frames: vec![frame],
                        state: State::Ready,
                        executed: 0,
                        visits: HashMap::new(),
                    });
                }
            }
        }
        loop {
            // Each warp runs until every lane has exited or waits at a barrier, its shuffles
            // resolved as its lanes reach them; then the barrier is released for the block.
            for warp in threads.chunks_mut(32) {
                loop {
                    for t in warp.iter_mut().filter(|t| t.state == State::Ready) {
                        let mut ctx = Ctx { kernels: self, memory, block: b, dims, stats };
                        ctx.run(t).map_err(|e| SimError(format!("thread {:?}: {e}", t.tid)))?;
                    }
                    if !self.release_shuffle(warp)? {
                        break;
                    }
                }
            }
            if threads.iter().all(|t| t.state == State::Exited) {
                return Ok(());
            }
            self.release_barrier(&mut threads)?;
            // Memory accesses before the barrier are ordered before every access after it.
            b.epoch += 1;
        }
    }

    /// Runs the `shfl.sync` the lanes of `warp` wait at, if any lane does (all 32 must wait at
    /// the same one); false when none does.
    fn release_shuffle(&self, warp: &mut [Thread<'_>]) -> Result<bool, SimError> {
        let at_shfl = |t: &Thread| t.state == State::Waiting && current(t).op == Op::ShflDown;
        let Some(leader) = warp.iter().find(|t| at_shfl(t)) else {
            return Ok(false);
        };
        let (first, depth) = (current(leader), leader.frames.len());
        let where_ = || format!("line {} `{}`", first.line, first.text);
        if warp.len() != 32 {
            return Err(SimError(format!("shfl.sync in a partial warp of {} lanes at {}", warp.len(), where_())));
        }
        let same = |t: &Thread| at_shfl(t) && std::ptr::eq(current(t), first) && t.frames.len() == depth;
        if !warp.iter().all(same) {
            let lanes: Vec<String> = warp.iter().filter(|t| !same(t)).map(|t| format!("{} ({:?})", t.linear % 32, t.state)).collect();
            return Err(SimError(format!(
                "shfl.sync with a full member mask at {}, but lanes {} are elsewhere",
                where_(),
                lanes.join(", ")
            )));
        }
        let [dst, a, b, c, mask] = first.operands.as_slice() else {
            return Err(SimError(format!("shfl.sync takes 5 operands at {}", where_())));
        };
        let mut values = [0u64; 32];
        let mut deltas = [0u64; 32];
        let mut clamps = [0u64; 32];
        for (lane, t) in warp.iter().enumerate() {
            let f = t.frames.last().unwrap();
            values[lane] = read_plain(f, a, Ty::B32).map_err(|e| SimError(format!("{}: {e}", where_())))?;
            deltas[lane] = read_plain(f, b, Ty::B32).map_err(|e| SimError(format!("{}: {e}", where_())))?;
            clamps[lane] = read_plain(f, c, Ty::B32).map_err(|e| SimError(format!("{}: {e}", where_())))?;
            let m = read_plain(f, mask, Ty::B32).map_err(|e| SimError(format!("{}: {e}", where_())))?;
            if m != 0xFFFF_FFFF {
                return Err(SimError(format!("{}: member mask {m:#x} (only full warps are modelled)", where_())));
            }
        }
        for (lane, t) in warp.iter_mut().enumerate() {
            let segmask = (clamps[lane] >> 8) & 0x1F;
            let max_lane = ((lane as u64) & segmask) | (clamps[lane] & 0x1F & !segmask);
            let j = lane as u64 + (deltas[lane] & 0x1F);
            let (src, valid) = if j <= max_lane { (j as usize, true) } else { (lane, false) };
            let f = t.frames.last_mut().unwrap();
            match dst {
                Operand::Reg(d) => write(f, *d, values[src]),
                Operand::RegPair(d, p) => {
                    write(f, *d, values[src]);
                    write(f, *p, valid as u64);
                }
                _ => return Err(SimError(format!("{}: bad destination", where_()))),
            }
            f.pc += 1;
            t.state = State::Ready;
        }
        Ok(true)
    }

    /// Releases a `bar.sync` that every thread still running has reached (exited threads count
    /// as arrived, as on sm_70 and later).
    fn release_barrier(&self, threads: &mut [Thread]) -> Result<(), SimError> {
        let live: Vec<&Thread> = threads.iter().filter(|t| t.state != State::Exited).collect();
        // Every thread must wait at the same `bar.sync` (the same instruction of the same call
        // depth): PTX leaves threads at different barrier instructions undefined.
        let first = live.first().map(|t| (current(t) as *const Inst, t.frames.len()));
        let all_at_barrier = live.iter().all(|t| {
            t.state == State::Waiting && current(t).op == Op::BarSync && Some((current(t) as *const Inst, t.frames.len())) == first
        });
        if !all_at_barrier {
            let stuck: Vec<String> = live.iter().take(4).map(|t| format!("thread {:?} at line {}", t.tid, current(t).line)).collect();
            return Err(SimError(format!("deadlock: threads wait at different collectives ({} ...)", stuck.join(", "))));
        }
        for t in threads.iter_mut().filter(|t| t.state == State::Waiting) {
            t.frames.last_mut().unwrap().pc += 1;
            t.state = State::Ready;
        }
        Ok(())
    }
}

/// The instruction a thread is at.
fn current<'m>(t: &Thread<'m>) -> &'m Inst {
    let f = t.frames.last().unwrap();
    let func: &'m Function = f.func;
    &func.body[f.pc]
}

fn write(f: &mut Frame, reg: usize, bits: u64) {
    f.regs[reg] = bits;
    f.written[reg] = true;
}

/// Reads a register or literal operand as `ty` (no specials, no addresses).
fn read_plain(f: &Frame, o: &Operand, ty: Ty) -> Result<u64, String> {
    match o {
        Operand::Reg(r) => {
            if !f.written[*r] {
                return Err("read of a register never written".into());
            }
            Ok(if ty == Ty::Pred { f.regs[*r] } else { mask(ty, f.regs[*r]) })
        }
        Operand::Int(_) if matches!(ty, Ty::F32 | Ty::F64) => Err("an integer literal as a float operand (write 0f.../0d...)".into()),
        Operand::Int(v) => Ok(mask(ty, *v as u64)),
        Operand::F32Bits(b) if ty == Ty::F32 || ty.bytes() == 4 => Ok(*b as u64),
        Operand::F64Bits(b) if ty == Ty::F64 || ty.bytes() == 8 => Ok(*b),
        _ => Err(format!("operand {o:?} cannot be read as .{ty:?}")),
    }
}

struct Ctx<'a, 'm> {
    kernels: &'m Kernels,
    memory: &'a mut Memory,
    block: &'a mut Block,
    dims: Dims,
    stats: &'a mut Stats,
}

impl<'m> Ctx<'_, 'm> {
    fn special(&self, t: &Thread, s: Special) -> u64 {
        let pick = |d: (u32, u32, u32), axis: usize| [d.0, d.1, d.2][axis] as u64;
        match s {
            Special::Tid(a) => pick(t.tid, a),
            Special::Ntid(a) => pick(self.dims.block, a),
            Special::Ctaid(a) => pick(self.block.ctaid, a),
            Special::Nctaid(a) => pick(self.dims.grid, a),
        }
    }

    fn read(&self, t: &Thread, o: &Operand, ty: Ty) -> Result<u64, String> {
        match o {
            Operand::Special(s) => Ok(self.special(t, *s)),
            Operand::Name(n) => self.kernels.shared_offsets.get(n).copied().ok_or_else(|| format!("unknown symbol `{n}`")),
            _ => read_plain(t.frames.last().unwrap(), o, ty),
        }
    }

    /// The thread's mark for the race check on global memory: 1 + its index in the grid (blocks x fastest), 1 +
    /// its block's index, and the block's epoch.
    fn global_mark(&self, t: &Thread) -> Result<Mark, String> {
        let (bx, by, bz) = self.dims.block;
        let id = self.block.linear * (bx * by * bz) as u64 + t.linear as u64 + 1;
        let too_big = || "grids of 2^32 threads are not modelled".to_string();
        let who = u32::try_from(id).ok().filter(|&i| i != ATOMICS).ok_or_else(too_big)?;
        let block = u32::try_from(self.block.linear + 1).ok().filter(|&i| i != u32::MAX).ok_or_else(too_big)?;
        Ok(Mark { who, block, epoch: self.block.epoch })
    }

    /// The thread's mark for the race check on its block's shared memory (one block: id 1).
    fn shared_mark(&self, t: &Thread) -> Mark {
        Mark { who: t.linear + 1, block: 1, epoch: self.block.epoch }
    }

    /// The address an `[base+offset]` operand names, in its space.
    fn address(&self, t: &Thread, o: &'m Operand, space: Space) -> Result<Address<'m>, String> {
        let Operand::Addr(base, off) = o else { return Err(format!("expected an address, got {o:?}")) };
        let f = t.frames.last().unwrap();
        match (space, base) {
            (Space::Param, AddrBase::Symbol(name)) if *off == 0 => Ok(Address::Param(name)),
            (Space::Param, _) => Err("parameter access with an offset or a register".into()),
            (Space::Shared, AddrBase::Symbol(name)) => {
                let at = self.kernels.shared_offsets.get(name).ok_or_else(|| format!("unknown shared array `{name}`"))?;
                Ok(Address::Shared(at.wrapping_add(*off as u64)))
            }
            (_, AddrBase::Reg(r)) => {
                let v = read_plain(f, &Operand::Reg(*r), Ty::B64)?;
                let a = v.wrapping_add(*off as u64);
                Ok(if space == Space::Shared { Address::Shared(a) } else { Address::Global(a) })
            }
            (Space::Global, AddrBase::Symbol(name)) => Err(format!("global symbol `{name}` is not modelled")),
        }
    }

    fn load(&mut self, t: &Thread, addr: &Address, ty: Ty, offset: u64, how: Access) -> Result<u64, String> {
        let size = ty.bytes();
        match addr {
            Address::Param(name) => {
                t.frames.last().unwrap().params.get(*name).copied().ok_or_else(|| format!("parameter `{name}` read before it was written"))
            }
            Address::Global(a) => {
                self.stats.global_loads += 1;
                let by = self.global_mark(t)?;
                Ok(le(self.memory.access(a + offset, size, by, how)?))
            }
            Address::Shared(a) => {
                let by = self.shared_mark(t);
                Ok(le(shared_access(self.block, a + offset, size, by, Access::Load)?))
            }
        }
    }

    fn store(&mut self, t: &mut Thread, addr: &Address, ty: Ty, offset: u64, v: u64) -> Result<(), String> {
        let size = ty.bytes();
        match addr {
            Address::Param(name) => {
                Rc::make_mut(&mut t.frames.last_mut().unwrap().params).insert(name.to_string(), v);
                Ok(())
            }
            Address::Global(a) => {
                self.stats.global_stores += 1;
                let by = self.global_mark(t)?;
                set_le(self.memory.access(a + offset, size, by, Access::Store)?, v);
                Ok(())
            }
            Address::Shared(a) => {
                let by = self.shared_mark(t);
                set_le(shared_access(self.block, a + offset, size, by, Access::Store)?, v);
                Ok(())
            }
        }
    }

    /// When profiling, notes that `t` runs the memory instruction `inst` on `bytes` bytes at
    /// `addr` (parameters are not memory traffic).
    fn record(&mut self, t: &mut Thread, inst: &Inst, addr: &Address, bytes: usize, store: bool) {
        let Some(r) = self.block.recorder.as_mut() else { return };
        let (kind, at) = match addr {
            Address::Param(_) => return,
            Address::Global(a) if matches!(inst.op, Op::Atomic { .. }) => (Kind::Atomic, *a),
            Address::Global(a) => (if store { Kind::GlobalStore } else { Kind::GlobalLoad }, *a),
            Address::Shared(a) => (Kind::Shared, *a),
        };
        let key = inst as *const Inst as usize;
        let n = t.visits.entry(key).or_insert(0);
        r.note(t.linear / 32, key, *n, kind, at, bytes);
        *n += 1;
    }

    /// Runs `t` until it exits or reaches a collective.
    fn run(&mut self, t: &mut Thread<'m>) -> Result<(), String> {
        loop {
            let inst = {
                let f = t.frames.last().unwrap();
                if f.pc >= f.func.body.len() {
                    return Err(format!("fell off the end of `{}`", f.func.name));
                }
                current(t)
            };
            if let Some((p, neg)) = inst.guard {
                let f = t.frames.last().unwrap();
                if !f.written[p] {
                    return Err(format!("line {}: guard predicate never written", inst.line));
                }
                if (f.regs[p] != 0) == neg {
                    t.frames.last_mut().unwrap().pc += 1;
                    continue;
                }
            }
            if matches!(inst.op, Op::BarSync | Op::ShflDown) {
                t.state = State::Waiting;
                return Ok(());
            }
            self.stats.instructions += 1;
            t.executed += 1;
            if t.executed > MAX_INSTRUCTIONS_PER_THREAD {
                return Err(format!("more than {MAX_INSTRUCTIONS_PER_THREAD} instructions in one thread: a loop that never ends?"));
            }
            let flow = self.exec(t, inst).map_err(|e| format!("line {} `{}`: {e}", inst.line, inst.text))?;
            match flow {
                Flow::Next => t.frames.last_mut().unwrap().pc += 1,
                Flow::Jump(target) => t.frames.last_mut().unwrap().pc = target,
                Flow::Call(frame) => {
                    t.frames.last_mut().unwrap().pc += 1;
                    t.frames.push(frame);
                }
                Flow::Return => {
                    let done = t.frames.pop().unwrap();
                    match t.frames.last_mut() {
                        None => {
                            t.state = State::Exited;
                            return Ok(());
                        }
                        Some(caller) => {
                            if let (Some(into), Some(ret)) = (done.result_into, done.func.ret.as_ref()) {
                                let v = done
                                    .params
                                    .get(&ret.name)
                                    .copied()
                                    .ok_or_else(|| format!("`{}` returned without storing its result", done.func.name))?;
                                Rc::make_mut(&mut caller.params).insert(into, v);
                            }
                        }
                    }
                }
            }
        }
    }

    fn exec(&mut self, t: &mut Thread<'m>, inst: &'m Inst) -> Result<Flow<'m>, String> {
        let ops = &inst.operands;
        let dst_reg = |i: usize| -> Result<usize, String> {
            match ops.get(i) {
                Some(Operand::Reg(r)) => Ok(*r),
                other => Err(format!("expected a register, got {other:?}")),
            }
        };
        macro_rules! arg {
            ($i:expr, $ty:expr) => {
                self.read(t, ops.get($i).ok_or("missing operand")?, $ty)?
            };
        }
        let set = |t: &mut Thread, r: usize, v: u64| write(t.frames.last_mut().unwrap(), r, v);
        match &inst.op {
            Op::Mov(ty) => match (&ops[0], &ops[1]) {
                (Operand::Reg(d), Operand::Vector(parts)) => {
                    let f = t.frames.last().unwrap();
                    let half = (ty.bytes() * 8) as u32 / parts.len() as u32;
                    let mut v = 0u64;
                    for (k, r) in parts.iter().enumerate() {
                        let part = read_plain(f, &Operand::Reg(*r), Ty::B32)?;
                        v |= (part & ((1u64 << half) - 1)) << (half * k as u32);
                    }
                    set(t, *d, mask(*ty, v));
                }
                (Operand::Vector(parts), _) => {
                    let v = arg!(1, *ty);
                    let half = (ty.bytes() * 8) as u32 / parts.len() as u32;
                    for (k, r) in parts.clone().iter().enumerate() {
                        set(t, *r, (v >> (half * k as u32)) & ((1u64 << half) - 1));
                    }
                }
                (Operand::Reg(d), _) => {
                    let v = arg!(1, *ty);
                    set(t, *d, v);
                }
                _ => return Err("unsupported mov".into()),
            },
            Op::Add(ty)
            | Op::Sub(ty)
            | Op::Mul(ty)
            | Op::Div(ty)
            | Op::Rem(ty)
            | Op::Min(ty)
            | Op::Max(ty)
            | Op::And(ty)
            | Op::Or(ty)
            | Op::Xor(ty) => {
                let (a, b) = (arg!(1, *ty), arg!(2, *ty));
                let v = binary(&inst.op, *ty, a, b)?;
                set(t, dst_reg(0)?, v);
            }
            Op::Shl(ty) | Op::Shr(ty) => {
                let a = arg!(1, *ty);
                let b = arg!(2, Ty::U32);
                let width = ty.bytes() as u64 * 8;
                let v = match (&inst.op, ty) {
                    (Op::Shl(_), _) => {
                        if b >= width {
                            0
                        } else {
                            mask(*ty, a << b)
                        }
                    }
                    (_, Ty::S32) => (a as u32 as i32 >> b.min(31)) as u32 as u64,
                    (_, Ty::S64) => (a as i64 >> b.min(63)) as u64,
                    _ => {
                        if b >= width {
                            0
                        } else {
                            a >> b
                        }
                    }
                };
                set(t, dst_reg(0)?, v);
            }
            Op::MulLo(ty) => {
                let v = mask(*ty, arg!(1, *ty).wrapping_mul(arg!(2, *ty)));
                set(t, dst_reg(0)?, v);
            }
            Op::MadLo(ty) => {
                let v = mask(*ty, arg!(1, *ty).wrapping_mul(arg!(2, *ty)).wrapping_add(arg!(3, *ty)));
                set(t, dst_reg(0)?, v);
            }
            Op::MulWide(ty) => {
                let (a, b) = (int_of(*ty, arg!(1, *ty)), int_of(*ty, arg!(2, *ty)));
                set(t, dst_reg(0)?, (a * b) as u64);
            }
            Op::Fma(ty) => {
                let v = match ty {
                    Ty::F32 => f32_of(arg!(1, *ty)).mul_add(f32_of(arg!(2, *ty)), f32_of(arg!(3, *ty))).to_bits() as u64,
                    Ty::F64 => f64_of(arg!(1, *ty)).mul_add(f64_of(arg!(2, *ty)), f64_of(arg!(3, *ty))).to_bits(),
                    _ => return Err("fma on integers".into()),
                };
                set(t, dst_reg(0)?, v);
            }
            Op::Abs(ty) | Op::Neg(ty) | Op::Sqrt(ty) | Op::Rcp(ty) => {
                let a = arg!(1, *ty);
                let v = match (&inst.op, ty) {
                    (Op::Abs(_), Ty::F32) => a & 0x7FFF_FFFF,
                    (Op::Neg(_), Ty::F32) => a ^ 0x8000_0000,
                    (Op::Abs(_), Ty::F64) => a & !(1 << 63),
                    (Op::Neg(_), Ty::F64) => a ^ (1 << 63),
                    (Op::Abs(_), Ty::S32) => (a as u32 as i32).wrapping_abs() as u32 as u64,
                    (Op::Neg(_), Ty::S32) => (a as u32 as i32).wrapping_neg() as u32 as u64,
                    (Op::Sqrt(_), Ty::F32) => f32_of(a).sqrt().to_bits() as u64,
                    (Op::Sqrt(_), Ty::F64) => f64_of(a).sqrt().to_bits(),
                    (Op::Rcp(_), Ty::F32) => (1.0 / f32_of(a)).to_bits() as u64,
                    (Op::Rcp(_), Ty::F64) => (1.0 / f64_of(a)).to_bits(),
                    _ => return Err("unsupported type".into()),
                };
                set(t, dst_reg(0)?, v);
            }
            Op::Setp(cmp, ty) => {
                let (a, b) = (arg!(1, *ty), arg!(2, *ty));
                let p = compare(*cmp, *ty, a, b)?;
                match &ops[0] {
                    Operand::Reg(d) => set(t, *d, p as u64),
                    Operand::RegPair(d, q) => {
                        set(t, *d, p as u64);
                        set(t, *q, !p as u64);
                    }
                    other => return Err(format!("bad setp destination {other:?}")),
                }
            }
            Op::Selp(ty) => {
                let (a, b, c) = (arg!(1, *ty), arg!(2, *ty), arg!(3, Ty::Pred));
                set(t, dst_reg(0)?, if c != 0 { a } else { b });
            }
            Op::Cvt { dst, src, round } => {
                let a = arg!(1, *src);
                set(t, dst_reg(0)?, convert(*dst, *src, *round, a)?);
            }
            Op::Cvta => {
                let a = arg!(1, Ty::U64);
                set(t, dst_reg(0)?, a);
            }
            Op::Ld { space, ty, vec, nc } => {
                let addr = self.address(t, &ops[1], *space)?;
                check_vector_alignment(&addr, ty.bytes() * vec)?;
                self.record(t, inst, &addr, ty.bytes() * vec, false);
                let dests: &[usize] = match &ops[0] {
                    Operand::Reg(r) if *vec == 1 => std::slice::from_ref(r),
                    Operand::Vector(rs) if rs.len() == *vec => rs,
                    other => return Err(format!("bad load destination {other:?}")),
                };
                for (k, &r) in dests.iter().enumerate() {
                    let how = if *nc { Access::LoadNc } else { Access::Load };
                    let v = self.load(t, &addr, *ty, (k * ty.bytes()) as u64, how)?;
                    set(t, r, v);
                }
            }
            Op::St { space, ty, vec } => {
                let addr = self.address(t, &ops[0], *space)?;
                check_vector_alignment(&addr, ty.bytes() * vec)?;
                self.record(t, inst, &addr, ty.bytes() * vec, true);
                let values = match &ops[1] {
                    Operand::Vector(rs) if rs.len() == *vec => {
                        let f = t.frames.last().unwrap();
                        rs.iter().map(|&r| read_plain(f, &Operand::Reg(r), *ty)).collect::<Result<Vec<u64>, String>>()?
                    }
                    _ if *vec == 1 => vec![arg!(1, *ty)],
                    other => return Err(format!("bad store source {other:?}")),
                };
                for (k, v) in values.into_iter().enumerate() {
                    self.store(t, &addr, *ty, (k * ty.bytes()) as u64, v)?;
                }
            }
            Op::Atomic { op, ty, returns } => {
                let (addr_op, val_op) = if *returns { (&ops[1], 2) } else { (&ops[0], 1) };
                let addr = self.address(t, addr_op, Space::Global)?;
                let v = arg!(val_op, *ty);
                let Address::Global(at) = addr else { return Err("atomics are modelled on global memory only".into()) };
                self.record(t, inst, &addr, ty.bytes(), true);
                let by = self.global_mark(t)?;
                let bytes = self.memory.access(at, ty.bytes(), by, Access::Atomic)?;
                let old = le(bytes);
                let new = match (op, ty) {
                    // PTX: red/atom.add.f32 on global memory flush subnormal inputs and
                    // results to sign-preserving zero.
                    (AtomOp::Add, Ty::F32) => ftz(ftz(f32_of(old)) + ftz(f32_of(v))).to_bits() as u64,
                    (AtomOp::Add, Ty::U32 | Ty::S32) => mask(*ty, old.wrapping_add(v)),
                    (AtomOp::Or, Ty::B32 | Ty::U32) => old | v,
                    _ => return Err("unsupported atomic".into()),
                };
                self.stats.atomics += 1;
                set_le(bytes, new);
                if *returns {
                    set(t, dst_reg(0)?, old);
                }
            }
            Op::Bra => match ops.as_slice() {
                [Operand::Int(target)] => return Ok(Flow::Jump(*target as usize)),
                _ => return Err("unresolved branch".into()),
            },
            Op::Ret => return Ok(Flow::Return),
            Op::Call => {
                let (results, name, args) = match ops.as_slice() {
                    [Operand::ParamList(r), Operand::Name(n), Operand::ParamList(a)] => (r.clone(), n, a.clone()),
                    [Operand::Name(n), Operand::ParamList(a)] => (Vec::new(), n, a.clone()),
                    _ => return Err("unsupported call form".into()),
                };
                let callee =
                    self.kernels.module.functions.get(name).filter(|f| !f.is_entry).ok_or_else(|| format!("no function `{name}`"))?;
                if callee.params.len() != args.len() || results.len() != callee.ret.iter().count() {
                    return Err(format!("call of `{name}` with the wrong number of parameters"));
                }
                let caller = t.frames.last().unwrap();
                let mut params = HashMap::new();
                for (p, a) in callee.params.iter().zip(&args) {
                    let v = caller.params.get(a).copied().ok_or_else(|| format!("argument `{a}` passed before it was stored"))?;
                    params.insert(p.name.clone(), v);
                }
                let frame = Frame {
                    func: callee,
                    pc: 0,
                    regs: vec![0; callee.nregs],
                    written: vec![false; callee.nregs],
                    params: Rc::new(params),
                    result_into: results.into_iter().next(),
                };
                return Ok(Flow::Call(frame));
            }
            Op::EndScope => {
                if let [Operand::ParamList(names)] = ops.as_slice() {
                    let params = Rc::make_mut(&mut t.frames.last_mut().unwrap().params);
                    for n in names {
                        params.remove(n);
                    }
                }
            }
            Op::BarSync | Op::ShflDown => unreachable!("collectives are run by the block scheduler"),
        }
        Ok(Flow::Next)
    }
}

enum Flow<'m> {
    Next,
    Jump(usize),
    Call(Frame<'m>),
    Return,
}

/// An address of an operand: a `.param` variable by name, or a byte address in a space.
enum Address<'m> {
    Param(&'m str),
    Global(u64),
    Shared(u64),
}

fn check_vector_alignment(addr: &Address, bytes: usize) -> Result<(), String> {
    match addr {
        Address::Global(a) | Address::Shared(a) if a % bytes as u64 != 0 => Err(format!("misaligned {bytes}-byte access at {a:#x}")),
        _ => Ok(()),
    }
}

/// The block's shared bytes at `a` for the thread `by`, after the race check of [`track`]
/// (threads of the block are ordered across its barriers) and the check that some thread of
/// the block wrote them before any read.
fn shared_access(b: &mut Block, a: u64, size: usize, by: Mark, how: Access) -> Result<&mut [u8], String> {
    let off = shared_offset(b.shared.len(), a, size)?;
    let written = &mut b.shared_written[off..off + size];
    match how {
        Access::Store | Access::Atomic => written.fill(true),
        Access::Load | Access::LoadNc if !written.iter().all(|&w| w) => {
            return Err(format!("read of shared memory at {a:#x} that no thread of the block wrote (shared memory starts undefined)"));
        }
        _ => {}
    }
    track(&mut b.shared_writer[off..off + size], &mut b.shared_reader[off..off + size], by, how)
        .map_err(|what| format!("data race on shared memory at {a:#x}: {what}"))?;
    Ok(&mut b.shared[off..off + size])
}
