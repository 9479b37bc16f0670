//! One-dimensional PostgreSQL arrays for bind parameters, written in one piece.
//!
//! diesel writes a `[T]` bind's header and every element through a buffer that grows as it is
//! written, so each array bind reallocates a few times (more as batches grow), and `String`
//! columns must be owned. These wrappers borrow their elements, compute the array's size in
//! PostgreSQL's binary format first and hand diesel the whole array in one write.

use diesel::pg::{Pg, PgMetadataLookup};
use diesel::serialize::{self, IsNull, Output, ToSql};
use diesel::sql_types::{Array, BigInt, HasSqlType, Text, Timestamptz};
use std::io::Write;

/// `bigint[]`.
#[derive(Debug)]
pub(super) struct BigInts(pub(super) Vec<i64>);

/// `text[]`.
#[derive(Debug)]
pub(super) struct Texts<'a>(pub(super) Vec<&'a str>);

/// `timestamptz[]`, from milliseconds since the Unix epoch.
#[derive(Debug)]
pub(super) struct MillisTimestamps(pub(super) Vec<i64>);

/// Array header: dimensions, null flag, element type, length, lower bound.
const HEADER_BYTES: usize = 20;
/// Microseconds from the Unix epoch to PostgreSQL's, 2000-01-01 00:00 UTC.
const POSTGRES_EPOCH_MICROS: i64 = 946_684_800_000_000;

impl ToSql<Array<BigInt>, Pg> for BigInts {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
        let mut array = header::<BigInt>(out.metadata_lookup(), self.0.len(), 12 * self.0.len())?;
        for value in &self.0 {
            array.extend_from_slice(&8i32.to_be_bytes());
            array.extend_from_slice(&value.to_be_bytes());
        }
        out.write_all(&array)?;
        Ok(IsNull::No)
    }
}

impl ToSql<Array<Text>, Pg> for Texts<'_> {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
        let bytes: usize = self.0.iter().map(|text| 4 + text.len()).sum();
        let mut array = header::<Text>(out.metadata_lookup(), self.0.len(), bytes)?;
        for text in &self.0 {
            array.extend_from_slice(&i32::try_from(text.len())?.to_be_bytes());
            array.extend_from_slice(text.as_bytes());
        }
        out.write_all(&array)?;
        Ok(IsNull::No)
    }
}

impl ToSql<Array<Timestamptz>, Pg> for MillisTimestamps {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
        let mut array =
            header::<Timestamptz>(out.metadata_lookup(), self.0.len(), 12 * self.0.len())?;
        for &millis in &self.0 {
            let micros = millis
                .checked_mul(1000)
                .and_then(|micros| micros.checked_sub(POSTGRES_EPOCH_MICROS))
                .ok_or_else(|| format!("timestamp out of range: {millis} ms"))?;
            array.extend_from_slice(&8i32.to_be_bytes());
            array.extend_from_slice(&micros.to_be_bytes());
        }
        out.write_all(&array)?;
        Ok(IsNull::No)
    }
}

/// A buffer of exactly the array's size holding its header, for `len` elements whose encodings
/// (each with its 4-byte length) take `element_bytes`.
fn header<T>(
    lookup: &mut (dyn PgMetadataLookup + 'static),
    len: usize,
    element_bytes: usize,
) -> Result<Vec<u8>, Box<dyn std::error::Error + Send + Sync>>
where
    Pg: HasSqlType<T>,
{
    let element_oid = <Pg as HasSqlType<T>>::metadata(lookup).oid()?;
    let mut array = Vec::with_capacity(HEADER_BYTES + element_bytes);
    array.extend_from_slice(&1i32.to_be_bytes());
    array.extend_from_slice(&0i32.to_be_bytes());
    array.extend_from_slice(&element_oid.to_be_bytes());
    array.extend_from_slice(&i32::try_from(len)?.to_be_bytes());
    array.extend_from_slice(&1i32.to_be_bytes());
    Ok(array)
}
