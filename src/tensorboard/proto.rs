//! The few protobuf messages of an event file (`tensorboard/compat/proto/event.proto`,
//! `summary.proto`, `histogram.proto`), encoded and decoded by hand.
//!
//! The encoding is byte for byte what protobuf's own serialiser writes: fields in number order,
//! proto3 scalars left out when zero (bitwise: `-0.0` is written), members of a `oneof`
//! (`file_version`, `summary`, `session_log`, `simple_value`, `histo`) always written, repeated
//! doubles packed. Decoding skips fields it does not know, as protobuf does.

/// One `Event`: a wall-clock time, a step and what happened.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Seconds since the Unix epoch.
    pub wall_time: f64,
    pub step: i64,
    pub what: What,
}

/// The `what` of an event (the `oneof` east writes, and the rest as `Other`).
#[derive(Debug, Clone, PartialEq)]
pub enum What {
    /// The first event of every file: `file_version` and the `source_metadata.writer`.
    FileVersion {
        version: String,
        writer: Option<String>,
    },
    Summary(Vec<Value>),
    /// `session_log { status: START }`: the run (re)started at this step.
    SessionStart,
    /// An event of a kind east does not write (graph, run metadata, other session logs).
    Other,
}

/// One `Summary.Value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Value {
    pub tag: String,
    pub data: ValueData,
}

impl Value {
    /// A scalar: the protocol's 32-bit `simple_value`, as every TensorBoard writer stores them.
    pub fn scalar(tag: impl Into<String>, v: f64) -> Value {
        Value {
            tag: tag.into(),
            data: ValueData::Simple(v as f32),
        }
    }

    pub fn histogram(tag: impl Into<String>, h: Histogram) -> Value {
        Value {
            tag: tag.into(),
            data: ValueData::Histogram(h),
        }
    }
}

/// A value's `oneof value`: the two kinds east writes.
#[derive(Debug, Clone, PartialEq)]
pub enum ValueData {
    /// `simple_value`: a scalar (a `float` in the protocol).
    Simple(f32),
    Histogram(Histogram),
    /// Another kind (image, audio, tensor).
    Other,
}

/// A `HistogramProto`: bucket `i` counts the values in `(bucket_limit[i-1], bucket_limit[i]]`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Histogram {
    pub min: f64,
    pub max: f64,
    pub num: f64,
    pub sum: f64,
    pub sum_squares: f64,
    pub bucket_limit: Vec<f64>,
    pub bucket: Vec<f64>,
}

// Wire types.
const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const BYTES: u8 = 2;
const FIXED32: u8 = 5;

/// `SessionLog.SessionStatus.START`.
const START: u64 = 1;

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_key(out: &mut Vec<u8>, field: u32, wire: u8) {
    put_varint(out, u64::from(field) << 3 | u64::from(wire));
}

fn put_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_key(out, field, BYTES);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// A proto3 `double`: left out when it is +0.0.
fn put_double(out: &mut Vec<u8>, field: u32, v: f64) {
    if v.to_bits() != 0 {
        put_key(out, field, FIXED64);
        out.extend_from_slice(&v.to_le_bytes());
    }
}

fn put_packed_doubles(out: &mut Vec<u8>, field: u32, vs: &[f64]) {
    if !vs.is_empty() {
        let bytes: Vec<u8> = vs.iter().flat_map(|v| v.to_le_bytes()).collect();
        put_bytes(out, field, &bytes);
    }
}

impl Event {
    /// The serialised message.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        put_double(&mut out, 1, self.wall_time);
        if self.step != 0 {
            put_key(&mut out, 2, VARINT);
            put_varint(&mut out, self.step as u64);
        }
        match &self.what {
            What::FileVersion { version, writer } => {
                put_bytes(&mut out, 3, version.as_bytes());
                if let Some(w) = writer {
                    let mut meta = Vec::new();
                    if !w.is_empty() {
                        put_bytes(&mut meta, 1, w.as_bytes());
                    }
                    put_bytes(&mut out, 10, &meta);
                }
            }
            What::Summary(values) => {
                let mut summary = Vec::new();
                for v in values {
                    put_bytes(&mut summary, 1, &v.encode());
                }
                put_bytes(&mut out, 5, &summary);
            }
            What::SessionStart => {
                let mut log = Vec::new();
                put_key(&mut log, 1, VARINT);
                put_varint(&mut log, START);
                put_bytes(&mut out, 7, &log);
            }
            What::Other => {}
        }
        out
    }

    /// Parses a serialised `Event`.
    pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
        let mut event = Event {
            wall_time: 0.0,
            step: 0,
            what: What::Other,
        };
        let (mut version, mut writer) = (None, None);
        for field in Fields(bytes) {
            match field? {
                (1, Wire::Fixed64(v)) => event.wall_time = f64::from_bits(v),
                (2, Wire::Varint(v)) => event.step = v as i64,
                (3, Wire::Bytes(b)) => version = Some(utf8(b)?),
                (5, Wire::Bytes(b)) => {
                    let values = Fields(b)
                        .filter_map(|f| match f {
                            Ok((1, Wire::Bytes(v))) => Some(Value::decode(v)),
                            Ok(_) => None,
                            Err(e) => Some(Err(e)),
                        })
                        .collect::<Result<_, _>>()?;
                    event.what = What::Summary(values);
                }
                (7, Wire::Bytes(b)) => {
                    let start = Fields(b).any(|f| matches!(f, Ok((1, Wire::Varint(START)))));
                    event.what = if start {
                        What::SessionStart
                    } else {
                        What::Other
                    };
                }
                (10, Wire::Bytes(b)) => {
                    writer = Some(String::new());
                    for f in Fields(b) {
                        if let (1, Wire::Bytes(w)) = f? {
                            writer = Some(utf8(w)?);
                        }
                    }
                }
                _ => {}
            }
        }
        if let Some(version) = version {
            event.what = What::FileVersion { version, writer };
        }
        Ok(event)
    }
}

impl Value {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        if !self.tag.is_empty() {
            put_bytes(&mut out, 1, self.tag.as_bytes());
        }
        match &self.data {
            ValueData::Simple(v) => {
                put_key(&mut out, 2, FIXED32);
                out.extend_from_slice(&v.to_le_bytes());
            }
            ValueData::Histogram(h) => put_bytes(&mut out, 5, &h.encode()),
            ValueData::Other => {}
        }
        out
    }

    fn decode(bytes: &[u8]) -> Result<Value, DecodeError> {
        let mut value = Value {
            tag: String::new(),
            data: ValueData::Other,
        };
        for field in Fields(bytes) {
            match field? {
                (1, Wire::Bytes(b)) => value.tag = utf8(b)?,
                (2, Wire::Fixed32(v)) => value.data = ValueData::Simple(f32::from_bits(v)),
                (5, Wire::Bytes(b)) => value.data = ValueData::Histogram(Histogram::decode(b)?),
                _ => {}
            }
        }
        Ok(value)
    }
}

impl Histogram {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        put_double(&mut out, 1, self.min);
        put_double(&mut out, 2, self.max);
        put_double(&mut out, 3, self.num);
        put_double(&mut out, 4, self.sum);
        put_double(&mut out, 5, self.sum_squares);
        put_packed_doubles(&mut out, 6, &self.bucket_limit);
        put_packed_doubles(&mut out, 7, &self.bucket);
        out
    }

    fn decode(bytes: &[u8]) -> Result<Histogram, DecodeError> {
        let mut h = Histogram::default();
        for field in Fields(bytes) {
            match field? {
                (1, Wire::Fixed64(v)) => h.min = f64::from_bits(v),
                (2, Wire::Fixed64(v)) => h.max = f64::from_bits(v),
                (3, Wire::Fixed64(v)) => h.num = f64::from_bits(v),
                (4, Wire::Fixed64(v)) => h.sum = f64::from_bits(v),
                (5, Wire::Fixed64(v)) => h.sum_squares = f64::from_bits(v),
                (6, w) => push_doubles(&mut h.bucket_limit, w)?,
                (7, w) => push_doubles(&mut h.bucket, w)?,
                _ => {}
            }
        }
        Ok(h)
    }
}

/// A repeated double, packed or (as older writers may do) one per field.
fn push_doubles(out: &mut Vec<f64>, wire: Wire<'_>) -> Result<(), DecodeError> {
    match wire {
        Wire::Fixed64(v) => out.push(f64::from_bits(v)),
        Wire::Bytes(b) if b.len() % 8 == 0 => out.extend(
            b.chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes"))),
        ),
        _ => return Err(DecodeError("a repeated double of the wrong wire type")),
    }
    Ok(())
}

fn utf8(b: &[u8]) -> Result<String, DecodeError> {
    String::from_utf8(b.to_vec()).map_err(|_| DecodeError("a string that is not UTF-8"))
}

/// A message that is not valid protobuf (what it got wrong).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a valid Event message: {0}")]
pub struct DecodeError(&'static str);

/// One field's payload.
#[derive(Debug, Clone, Copy)]
enum Wire<'a> {
    Varint(u64),
    Fixed64(u64),
    Bytes(&'a [u8]),
    Fixed32(u32),
}

/// The `(field number, payload)` pairs of a message, in order.
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut v = 0u64;
        for (i, &b) in self.0.iter().enumerate().take(10) {
            v |= u64::from(b & 0x7F) << (7 * i);
            if b & 0x80 == 0 {
                self.0 = &self.0[i + 1..];
                return Ok(v);
            }
        }
        Err(DecodeError("a varint that does not end"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError("a field that runs past the end of its message"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn field(&mut self) -> Result<(u32, Wire<'a>), DecodeError> {
        let key = self.varint()?;
        let number =
            u32::try_from(key >> 3).map_err(|_| DecodeError("a field number out of range"))?;
        let wire = match (key & 7) as u8 {
            VARINT => Wire::Varint(self.varint()?),
            FIXED64 => Wire::Fixed64(u64::from_le_bytes(
                self.take(8)?.try_into().expect("8 bytes"),
            )),
            BYTES => {
                let n = usize::try_from(self.varint()?)
                    .map_err(|_| DecodeError("a length out of range"))?;
                Wire::Bytes(self.take(n)?)
            }
            FIXED32 => Wire::Fixed32(u32::from_le_bytes(
                self.take(4)?.try_into().expect("4 bytes"),
            )),
            _ => return Err(DecodeError("an unknown wire type")),
        };
        Ok((number, wire))
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u32, Wire<'a>), DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.0.is_empty() {
            return None;
        }
        let item = self.field();
        if item.is_err() {
            self.0 = &[];
        }
        Some(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes written by Python protobuf 7.36 (`SerializeToString`) for the same messages:
    /// a zero step and +0.0 left out, -0.0 and a zero `simple_value` written, a negative step
    /// as ten varint bytes.
    #[test]
    fn encodes_as_protobuf_does() {
        let empty_summary = Event {
            wall_time: 0.0,
            step: 0,
            what: What::Summary(vec![]),
        };
        assert_eq!(empty_summary.encode(), [0x2a, 0x00]);
        let negative = Event {
            wall_time: 0.0,
            step: -1,
            what: What::Other,
        };
        let mut want = vec![0x10];
        want.extend([0xff; 9]);
        want.push(0x01);
        assert_eq!(negative.encode(), want);
        let zero = Value {
            tag: String::new(),
            data: ValueData::Simple(0.0),
        };
        assert_eq!(zero.encode(), [0x15, 0, 0, 0, 0]);
        let h = Histogram {
            min: -0.0,
            ..Histogram::default()
        };
        assert_eq!(h.encode(), [0x09, 0, 0, 0, 0, 0, 0, 0, 0x80]);
    }

    #[test]
    fn decoding_gives_back_what_was_encoded() {
        let events = [
            Event {
                wall_time: 1.7e9 + 0.25,
                step: 0,
                what: What::FileVersion {
                    version: "brain.Event:2".into(),
                    writer: Some("east".into()),
                },
            },
            Event {
                wall_time: 1.7e9,
                step: 300,
                what: What::Summary(vec![
                    Value {
                        tag: "train/loss".into(),
                        data: ValueData::Simple(0.693),
                    },
                    Value {
                        tag: "h".into(),
                        data: ValueData::Histogram(Histogram {
                            min: -1.0,
                            max: 2.0,
                            num: 3.0,
                            sum: 1.5,
                            sum_squares: 5.25,
                            bucket_limit: vec![0.0, 1.0, 2.0],
                            bucket: vec![1.0, 0.0, 2.0],
                        }),
                    },
                ]),
            },
            Event {
                wall_time: 2.0,
                step: 7,
                what: What::SessionStart,
            },
        ];
        for e in events {
            assert_eq!(Event::decode(&e.encode()).unwrap(), e);
        }
    }

    #[test]
    fn truncated_messages_are_errors_not_panics() {
        let e = Event {
            wall_time: 3.0,
            step: 12,
            what: What::Summary(vec![Value {
                tag: "x".into(),
                data: ValueData::Simple(1.0),
            }]),
        }
        .encode();
        for cut in 1..e.len() {
            // every prefix either fails or decodes to something; none panics
            let _ = Event::decode(&e[..cut]);
        }
        assert!(Event::decode(&e[..e.len() - 1]).is_err());
        assert!(Event::decode(&[0x0f]).is_err());
    }
}
