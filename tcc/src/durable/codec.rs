//! How a file store writes a record as bytes.
//!
//! The layouts of a record, a progress row and an outcome (format 3) are in
//! `docs/design.md`, section 3, with why each carries a checksum of its key
//! and body: a byte changed on disk makes the value unreadable, never another
//! value, and a value found under another key is refused too. Format 1 had no checksum
//! and kept the progress inside the record; it is refused: reading it would
//! trust what format 2 exists to check.
//!
//! The leading format byte is what keeps the file readable across versions:
//! a later version that adds a field writes a new format and still reads the
//! older ones. Format 3 added the times a record was decided and ended, and
//! an outcome's decision time and resolution; this version writes 3 and
//! reads 2 and 3 (a format 2 value has no such times), and refuses a format
//! it does not know, naming it, rather than misreading it.
//!
//! Encoding never panics: a field of 4 GiB or more, which a u32 length
//! cannot say, is refused with [`LogErrorKind::TooLarge`]. Decoding says why
//! a record is unreadable; the store turns that into a
//! [`Corrupt`](LogErrorKind::Corrupt) error naming its file.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::rules::{Finished, Stored};
use super::{
    Decision, Intent, LogError, LogErrorKind, ParticipantEntry, PhaseProgress, Resolution, Status,
    TransactionRecord,
};
use crate::{Phase, TransactionId};

/// The format this version writes.
const FORMAT: u8 = 3;
/// The oldest format this version reads.
const OLDEST_READ: u8 = 2;

/// The format byte and the checksum, before what the checksum covers.
const HEADER_LEN: usize = 5;

fn nanos(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn time(nanos: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(nanos)
}

/// A time that may be missing: 0 for none (a real one is never the Unix
/// epoch itself, so it is written as 1 ns past it at the least).
fn optional_nanos(time: Option<SystemTime>) -> u64 {
    time.map_or(0, |time| nanos(time).max(1))
}

fn optional_time(nanos: u64) -> Option<SystemTime> {
    (nanos != 0).then(|| time(nanos))
}

fn decision_byte(decision: Decision) -> u8 {
    match decision {
        Decision::Confirm => 0,
        Decision::Cancel => 1,
    }
}

/// The key a value is stored under, as its checksum covers it.
#[derive(Clone, Copy)]
enum Key {
    /// A record's or an outcome's.
    Transaction(TransactionId),
    /// One participant's progress in one phase.
    Progress(TransactionId, u32, Phase),
}

impl Key {
    fn id(self) -> TransactionId {
        match self {
            Key::Transaction(id) | Key::Progress(id, _, _) => id,
        }
    }
}

/// The checksum of a value's body, bound to the key it is stored under.
fn checksum(key: Key, body: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&key.id().as_u128().to_le_bytes());
    if let Key::Progress(_, participant, phase) = key {
        hasher.update(&participant.to_le_bytes());
        hasher.update(&[phase as u8]);
    }
    hasher.update(body);
    hasher.finalize()
}

/// Starts a value: the format byte, and room for the checksum.
fn start(capacity: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(capacity);
    out.push(FORMAT);
    out.extend_from_slice(&[0; 4]);
    out
}

/// Fills in the checksum of a value begun by [`start`].
fn seal(key: Key, mut out: Vec<u8>) -> Vec<u8> {
    let sum = checksum(key, &out[HEADER_LEN..]);
    out[1..HEADER_LEN].copy_from_slice(&sum.to_le_bytes());
    out
}

/// The u32 length of a field of transaction `id`, or why it cannot be
/// written.
pub(crate) fn field_len(id: TransactionId, what: &str, len: usize) -> Result<u32, LogError> {
    u32::try_from(len).map_err(|_| {
        LogError::new(
            LogErrorKind::TooLarge,
            format!("transaction {id}: {what} is {len} bytes; a field of the log is under 4 GiB"),
        )
    })
}

fn put_bytes(
    out: &mut Vec<u8>,
    id: TransactionId,
    what: &str,
    bytes: &[u8],
) -> Result<(), LogError> {
    out.extend_from_slice(&field_len(id, what, bytes.len())?.to_le_bytes());
    out.extend_from_slice(bytes);
    Ok(())
}

/// The bytes of a record, without its progress (see [`encode_progress`]);
/// fails only with [`LogErrorKind::TooLarge`].
pub(crate) fn encode(stored: &Stored) -> Result<Vec<u8>, LogError> {
    let record = &stored.record;
    let id = record.intent.id;
    let (status, decision) = match record.status {
        Status::Undecided => (0, 0),
        Status::Decided(d) => (1, decision_byte(d)),
        Status::NeedsRepair(d) => (2, decision_byte(d)),
        // A finished transaction is kept as an outcome, an unreadable one
        // as the bytes it was found with: neither is ever encoded.
        Status::Done(_) | Status::Unreadable => {
            return Err(LogError::new(
                LogErrorKind::Corrupt,
                format!(
                    "transaction {id}: a record of status {:?} cannot be written",
                    record.status
                ),
            ));
        }
    };
    let mut out = start(32 + record.intent.participants.len() * 48);
    out.extend_from_slice(&stored.epoch.to_le_bytes());
    out.push(status);
    out.push(decision);
    out.extend_from_slice(&nanos(record.started_at).to_le_bytes());
    out.extend_from_slice(&optional_nanos(record.decided_at).to_le_bytes());
    out.extend_from_slice(&optional_nanos(record.ended_at).to_le_bytes());
    let count = field_len(
        id,
        "the participant count",
        record.intent.participants.len(),
    )?;
    out.extend_from_slice(&count.to_le_bytes());
    for participant in &record.intent.participants {
        put_bytes(
            &mut out,
            id,
            "a participant's name",
            participant.name.as_bytes(),
        )?;
        put_bytes(
            &mut out,
            id,
            "a participant's kind",
            participant.kind.as_bytes(),
        )?;
        put_bytes(&mut out, id, "a participant's data", &participant.data)?;
    }
    Ok(seal(Key::Transaction(id), out))
}

/// The bytes of one participant's progress in one phase; fails only with
/// [`LogErrorKind::TooLarge`].
pub(crate) fn encode_progress(
    id: TransactionId,
    participant: u32,
    phase: Phase,
    progress: &PhaseProgress,
) -> Result<Vec<u8>, LogError> {
    let mut out = start(HEADER_LEN + 16);
    out.extend_from_slice(&progress.attempts.to_le_bytes());
    out.push(u8::from(progress.succeeded));
    match &progress.last_error {
        Some(error) => {
            out.push(1);
            put_bytes(&mut out, id, "a phase's last error", error.as_bytes())?;
        }
        None => out.push(0),
    }
    Ok(seal(Key::Progress(id, participant, phase), out))
}

/// Reads what [`encode_progress`] wrote under the same key.
pub(crate) fn decode_progress(
    id: TransactionId,
    participant: u32,
    phase: Phase,
    bytes: &[u8],
) -> Result<PhaseProgress, String> {
    // The same layout in formats 2 and 3.
    let (mut r, _) = Reader::checked(Key::Progress(id, participant, phase), bytes)?;
    let progress = PhaseProgress {
        attempts: r.u32()?,
        succeeded: r.u8()? != 0,
        last_error: match r.u8()? {
            0 => None,
            _ => Some(r.string()?),
        },
    };
    r.end()?;
    Ok(progress)
}

/// The phase a progress key's byte names.
pub(crate) fn phase(byte: u8) -> Option<Phase> {
    Phase::ALL.into_iter().find(|phase| *phase as u8 == byte)
}

/// Reads what [`encode`] wrote, refusing anything else; the error says why,
/// for the store to name its file. Its progress is all default: the store
/// adds what [`decode_progress`] reads.
pub(crate) fn decode(id: TransactionId, bytes: &[u8]) -> Result<Stored, String> {
    let (mut r, format) = Reader::checked(Key::Transaction(id), bytes)?;
    let epoch = r.u64()?;
    let status = r.u8()?;
    let decision = r.decision()?;
    let status = match status {
        0 => Status::Undecided,
        1 => Status::Decided(decision),
        2 => Status::NeedsRepair(decision),
        other => return Err(format!("unknown status {other}")),
    };
    let started_at = time(r.u64()?);
    let (decided_at, ended_at) = match format {
        2 => (None, None),
        _ => (optional_time(r.u64()?), optional_time(r.u64()?)),
    };
    let count = r.u32()? as usize;
    // Each participant takes at least 12 bytes: a count beyond what is left is
    // corruption, and must not become a huge allocation.
    if count > r.bytes.len() / 12 {
        return Err("participant count beyond the record's length".into());
    }
    let mut participants = Vec::with_capacity(count);
    for _ in 0..count {
        participants.push(ParticipantEntry {
            name: r.string()?,
            kind: r.string()?,
            data: r.bytes()?.to_vec(),
        });
    }
    r.end()?;
    let progress = vec![Default::default(); count];
    Ok(Stored {
        record: TransactionRecord {
            intent: Intent { id, participants },
            progress,
            decided_at,
            ended_at,
            ..TransactionRecord::bare(id, status, started_at)
        },
        epoch,
    })
}

/// The bytes of an outcome; fails only with [`LogErrorKind::TooLarge`] (a
/// resolution's text of 4 GiB or more).
pub(crate) fn encode_outcome(id: TransactionId, outcome: &Finished) -> Result<Vec<u8>, LogError> {
    let mut out = start(HEADER_LEN + 26);
    out.push(decision_byte(outcome.decision));
    out.extend_from_slice(&nanos(outcome.started_at).to_le_bytes());
    out.extend_from_slice(&optional_nanos(outcome.decided_at).to_le_bytes());
    out.extend_from_slice(&nanos(outcome.finished_at).to_le_bytes());
    match &outcome.resolution {
        Some(resolution) => {
            out.push(1);
            put_bytes(
                &mut out,
                id,
                "a resolution's author",
                resolution.by.as_bytes(),
            )?;
            put_bytes(
                &mut out,
                id,
                "a resolution's note",
                resolution.note.as_bytes(),
            )?;
        }
        None => out.push(0),
    }
    Ok(seal(Key::Transaction(id), out))
}

pub(crate) fn decode_outcome(id: TransactionId, bytes: &[u8]) -> Result<Finished, String> {
    let (mut r, format) = Reader::checked(Key::Transaction(id), bytes)?;
    let decision = r.decision()?;
    let started_at = time(r.u64()?);
    let outcome = match format {
        2 => Finished {
            decision,
            started_at,
            decided_at: None,
            finished_at: time(r.u64()?),
            resolution: None,
        },
        _ => Finished {
            decision,
            started_at,
            decided_at: optional_time(r.u64()?),
            finished_at: time(r.u64()?),
            resolution: match r.u8()? {
                0 => None,
                _ => Some(Resolution {
                    by: r.string()?,
                    note: r.string()?,
                }),
            },
        },
    };
    r.end()?;
    Ok(outcome)
}

/// Reads a value's fields, after its format and checksum were checked.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    /// The body of a value stored under `key`, and its format, if that is
    /// known and its checksum right.
    fn checked(key: Key, bytes: &'a [u8]) -> Result<(Self, u8), String> {
        let Some((&format, rest)) = bytes.split_first() else {
            return Err("empty".into());
        };
        if !(OLDEST_READ..=FORMAT).contains(&format) {
            return Err(format!(
                "written in format {format}, this version of tcc reads formats {OLDEST_READ} to {FORMAT}"
            ));
        }
        let Some((sum, body)) = rest.split_first_chunk::<4>() else {
            return Err("cut short".into());
        };
        let (stored, computed) = (u32::from_le_bytes(*sum), checksum(key, body));
        if stored != computed {
            return Err(format!(
                "its checksum does not match its bytes (stored {stored:08x}, computed {computed:08x}): it was changed after it was written"
            ));
        }
        Ok((Reader { bytes: body }, format))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.bytes.len() < n {
            return Err("cut short".into());
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let Some((head, tail)) = self.bytes.split_first_chunk::<N>() else {
            return Err("cut short".into());
        };
        self.bytes = tail;
        Ok(*head)
    }

    fn end(&self) -> Result<(), String> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err("trailing bytes".into())
        }
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.array::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn decision(&mut self) -> Result<Decision, String> {
        match self.u8()? {
            0 => Ok(Decision::Confirm),
            1 => Ok(Decision::Cancel),
            other => Err(format!("unknown decision {other}")),
        }
    }

    fn bytes(&mut self) -> Result<&'a [u8], String> {
        let len = self.u32()? as usize;
        self.take(len)
    }

    fn string(&mut self) -> Result<String, String> {
        let bytes = self.bytes()?;
        String::from_utf8(bytes.to_vec()).map_err(|_| "a name that is not UTF-8".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Phase;

    fn sample() -> Stored {
        let mut progress = vec![<[PhaseProgress; 3]>::default(); 2];
        progress[1][Phase::Confirm as usize] = PhaseProgress {
            attempts: 3,
            succeeded: false,
            last_error: Some("timeout".into()),
        };
        progress[0][Phase::Try as usize].succeeded = true;
        Stored {
            record: TransactionRecord {
                intent: Intent {
                    id: TransactionId::from_u128(7),
                    participants: vec![
                        ParticipantEntry {
                            name: "payer".into(),
                            kind: "account".into(),
                            data: br#"{"account":"alice","amount":10}"#.to_vec(),
                        },
                        ParticipantEntry {
                            name: "payee".into(),
                            kind: "account".into(),
                            data: vec![],
                        },
                    ],
                },
                progress,
                decided_at: Some(time(1_234_567_890_456)),
                ended_at: Some(time(1_234_567_890_789)),
                ..TransactionRecord::bare(
                    TransactionId::from_u128(7),
                    Status::NeedsRepair(Decision::Cancel),
                    time(1_234_567_890_123),
                )
            },
            epoch: 42,
        }
    }

    #[test]
    fn a_record_reads_back_as_written_its_progress_apart() {
        let stored = sample();
        let bytes = encode(&stored).unwrap();
        let mut read = decode(stored.id(), &bytes).unwrap();
        let none = <[PhaseProgress; 3]>::default();
        assert!(read.record.progress.iter().all(|p| *p == none));
        for (participant, phases) in stored.record.progress.iter().enumerate() {
            for phase in Phase::ALL {
                let progress = &phases[phase as usize];
                let participant = participant as u32;
                let bytes = encode_progress(stored.id(), participant, phase, progress).unwrap();
                read.record.progress[participant as usize][phase as usize] =
                    decode_progress(stored.id(), participant, phase, &bytes).unwrap();
                // Under another participant's or phase's key: refused.
                assert!(decode_progress(stored.id(), participant + 1, phase, &bytes).is_err());
            }
        }
        assert_eq!(read, stored);
    }

    #[test]
    fn every_cut_and_an_unknown_format_are_refused_not_misread() {
        let stored = sample();
        let bytes = encode(&stored).unwrap();
        for len in 0..bytes.len() {
            assert!(decode(stored.id(), &bytes[..len]).is_err(), "cut at {len}");
        }
        let mut newer = bytes.clone();
        newer[0] = 4;
        let why = decode(stored.id(), &newer).unwrap_err();
        assert!(why.contains("format 4"), "{why}");
    }

    #[test]
    fn every_flipped_bit_is_refused_by_the_checksum() {
        let stored = sample();
        let bytes = encode(&stored).unwrap();
        for at in 0..bytes.len() {
            for bit in 0..8 {
                let mut flipped = bytes.clone();
                flipped[at] ^= 1 << bit;
                assert!(
                    decode(stored.id(), &flipped).is_err(),
                    "byte {at} bit {bit} read as a record"
                );
            }
        }
        // Under another key, the same bytes are refused too.
        let why = decode(TransactionId::from_u128(8), &bytes).unwrap_err();
        assert!(why.contains("checksum"), "{why}");
    }

    #[test]
    fn a_decision_changed_on_disk_is_refused_not_read_as_the_other() {
        let mut stored = sample();
        stored.record.status = Status::Decided(Decision::Cancel);
        let mut bytes = encode(&stored).unwrap();
        // format, checksum, epoch, then the status and the decision.
        assert_eq!((bytes[13], bytes[14]), (1, 1));
        bytes[14] = 0;
        let why = decode(stored.id(), &bytes).unwrap_err();
        assert!(why.contains("checksum"), "{why}");
    }

    #[test]
    fn a_field_of_4_gib_is_an_error_not_a_panic() {
        let id = TransactionId::from_u128(9);
        // Only the length: no need to allocate 4 GiB to see it refused.
        let error = field_len(id, "a participant's data", u32::MAX as usize + 1).unwrap_err();
        assert_eq!(error.kind(), LogErrorKind::TooLarge);
        assert!(error.to_string().contains("4294967296 bytes"), "{error}");
        assert!(error.to_string().contains(&id.to_string()), "{error}");
        assert_eq!(
            field_len(id, "a name", u32::MAX as usize).unwrap(),
            u32::MAX
        );
    }

    #[test]
    fn an_outcome_reads_back_as_written_and_is_checked() {
        let resolved = Finished {
            decision: Decision::Confirm,
            started_at: time(5),
            decided_at: Some(time(7)),
            finished_at: time(9),
            resolution: Some(Resolution::new("ada", "refunded by hand")),
        };
        let plain = Finished {
            decided_at: None,
            resolution: None,
            ..resolved.clone()
        };
        let id = TransactionId::from_u128(1);
        for outcome in [resolved, plain] {
            let bytes = encode_outcome(id, &outcome).unwrap();
            assert_eq!(decode_outcome(id, &bytes).unwrap(), outcome);
            let mut flipped = bytes.clone();
            flipped[HEADER_LEN] = 1;
            assert!(decode_outcome(id, &flipped).is_err());
            for len in 0..bytes.len() {
                assert!(decode_outcome(id, &bytes[..len]).is_err(), "cut at {len}");
            }
        }
    }

    /// A value of format 2 as the previous version wrote it: its body
    /// sealed under `key`.
    fn format_2(key: Key, body: &[u8]) -> Vec<u8> {
        let mut out = vec![2, 0, 0, 0, 0];
        out.extend_from_slice(body);
        let sum = checksum(key, &out[HEADER_LEN..]);
        out[1..HEADER_LEN].copy_from_slice(&sum.to_le_bytes());
        out
    }

    #[test]
    fn values_of_format_2_are_read_without_the_times_format_3_added() {
        let id = TransactionId::from_u128(11);
        // A record: epoch, status, decision, started_at, participants.
        let mut body = Vec::new();
        body.extend_from_slice(&5u64.to_le_bytes());
        body.extend_from_slice(&[1, 1]);
        body.extend_from_slice(&1_000u64.to_le_bytes());
        body.extend_from_slice(&1u32.to_le_bytes());
        for field in [&b"payer"[..], b"account", b"{}"] {
            body.extend_from_slice(&(field.len() as u32).to_le_bytes());
            body.extend_from_slice(field);
        }
        let stored = decode(id, &format_2(Key::Transaction(id), &body)).unwrap();
        assert_eq!(stored.epoch, 5);
        assert_eq!(stored.record.status, Status::Decided(Decision::Cancel));
        assert_eq!(stored.record.started_at, time(1_000));
        assert_eq!(stored.record.intent.participants[0].name, "payer");
        assert_eq!(stored.record.intent.participants[0].data, b"{}");
        assert_eq!(
            (stored.record.decided_at, stored.record.ended_at),
            (None, None)
        );

        // An outcome: decision, started_at, finished_at.
        let mut body = vec![0];
        body.extend_from_slice(&1_000u64.to_le_bytes());
        body.extend_from_slice(&2_000u64.to_le_bytes());
        let outcome = decode_outcome(id, &format_2(Key::Transaction(id), &body)).unwrap();
        assert_eq!(
            outcome,
            Finished {
                decision: Decision::Confirm,
                started_at: time(1_000),
                decided_at: None,
                finished_at: time(2_000),
                resolution: None,
            }
        );

        // A progress row: the same layout in both formats.
        let mut body = 3u32.to_le_bytes().to_vec();
        body.extend_from_slice(&[0, 1, 4, 0, 0, 0]);
        body.extend_from_slice(b"down");
        let key = Key::Progress(id, 1, Phase::Confirm);
        let progress = decode_progress(id, 1, Phase::Confirm, &format_2(key, &body)).unwrap();
        assert_eq!(progress.attempts, 3);
        assert_eq!(progress.last_error.as_deref(), Some("down"));
    }
}
