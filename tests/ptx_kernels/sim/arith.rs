//! The arithmetic of the modelled instructions on raw register bits: integer and float binary
//! operations, PTX's `min`/`max`, `setp` comparisons and `cvt` conversions.

use super::parse::{Cmp, Op, Round, Ty};

pub(super) fn mask(ty: Ty, v: u64) -> u64 {
    match ty.bytes() {
        2 => v & 0xFFFF,
        4 => v & 0xFFFF_FFFF,
        _ => v,
    }
}

pub(super) fn f32_of(v: u64) -> f32 {
    f32::from_bits(v as u32)
}

pub(super) fn f64_of(v: u64) -> f64 {
    f64::from_bits(v)
}

pub(super) fn is_float(ty: Ty) -> bool {
    matches!(ty, Ty::F32 | Ty::F64)
}

/// A value of `ty` as i128, for integer comparisons and conversions.
pub(super) fn int_of(ty: Ty, v: u64) -> i128 {
    match ty {
        Ty::S32 => v as u32 as i32 as i128,
        Ty::S64 => v as i64 as i128,
        _ => mask(ty, v) as i128,
    }
}

pub(super) fn binary(op: &Op, ty: Ty, a: u64, b: u64) -> Result<u64, String> {
    Ok(match ty {
        Ty::F32 => {
            let (x, y) = (f32_of(a), f32_of(b));
            let r = match op {
                Op::Add(_) => x + y,
                Op::Sub(_) => x - y,
                Op::Mul(_) => x * y,
                Op::Div(_) => x / y,
                Op::Min(_) => fmin(x as f64, y as f64) as f32,
                Op::Max(_) => fmax(x as f64, y as f64) as f32,
                _ => return Err("unsupported f32 operation".into()),
            };
            r.to_bits() as u64
        }
        Ty::F64 => {
            let (x, y) = (f64_of(a), f64_of(b));
            let r = match op {
                Op::Add(_) => x + y,
                Op::Sub(_) => x - y,
                Op::Mul(_) => x * y,
                Op::Div(_) => x / y,
                Op::Min(_) => fmin(x, y),
                Op::Max(_) => fmax(x, y),
                _ => return Err("unsupported f64 operation".into()),
            };
            r.to_bits()
        }
        Ty::Pred => match op {
            Op::And(_) => a & b & 1,
            Op::Or(_) => (a | b) & 1,
            Op::Xor(_) => (a ^ b) & 1,
            _ => return Err("unsupported predicate operation".into()),
        },
        _ => {
            let (x, y) = (int_of(ty, a), int_of(ty, b));
            let r: i128 = match op {
                Op::Add(_) => x + y,
                Op::Sub(_) => x - y,
                Op::Div(_) | Op::Rem(_) if y == 0 => return Err("integer division by zero".into()),
                Op::Div(_) => x / y,
                Op::Rem(_) => x % y,
                Op::Min(_) => x.min(y),
                Op::Max(_) => x.max(y),
                Op::And(_) => return Ok(a & b),
                Op::Or(_) => return Ok(a | b),
                Op::Xor(_) => return Ok(a ^ b),
                _ => return Err("unsupported integer operation".into()),
            };
            mask(ty, r as u64)
        }
    })
}

/// PTX `min.f32`: NaN only if both are NaN, else the other; -0 below +0.
pub(super) fn fmin(x: f64, y: f64) -> f64 {
    if x.is_nan() {
        y
    } else if y.is_nan() || x < y || (x == y && x.is_sign_negative()) {
        x
    } else {
        y
    }
}

/// PTX `max.f32`: NaN only if both are NaN, else the other; +0 above -0.
pub(super) fn fmax(x: f64, y: f64) -> f64 {
    if x.is_nan() {
        y
    } else if y.is_nan() || x > y || (x == y && x.is_sign_positive()) {
        x
    } else {
        y
    }
}

pub(super) fn compare(cmp: Cmp, ty: Ty, a: u64, b: u64) -> Result<bool, String> {
    if is_float(ty) {
        let (x, y) = if ty == Ty::F32 { (f32_of(a) as f64, f32_of(b) as f64) } else { (f64_of(a), f64_of(b)) };
        let unordered = x.is_nan() || y.is_nan();
        return Ok(match cmp {
            Cmp::Eq => x == y,
            Cmp::Ne => !unordered && x != y,
            Cmp::Lt => x < y,
            Cmp::Le => x <= y,
            Cmp::Gt => x > y,
            Cmp::Ge => x >= y,
            Cmp::Equ => unordered || x == y,
            Cmp::Neu => unordered || x != y,
            Cmp::Ltu => unordered || x < y,
            Cmp::Leu => unordered || x <= y,
            Cmp::Gtu => unordered || x > y,
            Cmp::Geu => unordered || x >= y,
            Cmp::Nan => unordered,
            Cmp::Num => !unordered,
        });
    }
    let (x, y) = (int_of(ty, a), int_of(ty, b));
    Ok(match cmp {
        Cmp::Eq => x == y,
        Cmp::Ne => x != y,
        Cmp::Lt => x < y,
        Cmp::Le => x <= y,
        Cmp::Gt => x > y,
        Cmp::Ge => x >= y,
        _ => return Err("unordered comparison of integers".into()),
    })
}

pub(super) fn convert(dst: Ty, src: Ty, round: Round, a: u64) -> Result<u64, String> {
    let integral = |x: f64| -> Result<f64, String> {
        Ok(match round {
            Round::Rni => x.round_ties_even(),
            Round::Rzi => x.trunc(),
            Round::Rmi => x.floor(),
            Round::Rpi => x.ceil(),
            _ => return Err(format!("conversion to .{dst:?} needs an integer rounding")),
        })
    };
    Ok(match (is_float(dst), is_float(src)) {
        (false, false) => {
            if round != Round::None {
                return Err("rounding on an integer conversion".into());
            }
            mask(dst, int_of(src, a) as u64)
        }
        (true, false) => {
            let x = int_of(src, a);
            match (dst, round) {
                (Ty::F32, Round::Rn) => (x as f32).to_bits() as u64,
                (Ty::F64, Round::Rn) => (x as f64).to_bits(),
                _ => return Err("integer to float needs .rn".into()),
            }
        }
        (false, true) => {
            let x = if src == Ty::F32 { f32_of(a) as f64 } else { f64_of(a) };
            let r = integral(x)?;
            // Saturating, NaN to 0: as PTX's cvt to an integer, and as Rust's `as`.
            match dst {
                Ty::U32 => r as u32 as u64,
                Ty::S32 => r as i32 as u32 as u64,
                Ty::U64 => r as u64,
                Ty::S64 => r as i64 as u64,
                Ty::U16 => r as u16 as u64,
                _ => return Err("unsupported float to integer conversion".into()),
            }
        }
        (true, true) => match (dst, src, round) {
            (Ty::F64, Ty::F32, Round::None) => (f32_of(a) as f64).to_bits(),
            (Ty::F32, Ty::F64, Round::Rn) => (f64_of(a) as f32).to_bits() as u64,
            (Ty::F32, Ty::F32, _) => (integral(f32_of(a) as f64)? as f32).to_bits() as u64,
            (Ty::F64, Ty::F64, _) => integral(f64_of(a))?.to_bits(),
            _ => return Err("unsupported float conversion".into()),
        },
    })
}

/// `x` with a subnormal flushed to zero of the same sign.
pub(super) fn ftz(x: f32) -> f32 {
    if x.is_subnormal() {
        0.0f32.copysign(x)
    } else {
        x
    }
}
