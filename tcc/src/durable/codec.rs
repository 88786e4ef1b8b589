//! How a file store writes a record as bytes.
//!
//! A record (format 1), little-endian:
//!
//! ```text
//! u8   format = 1
//! u64  epoch
//! u8   status: 0 undecided, 1 decided, 2 needs repair
//! u8   decision: 0 confirm, 1 cancel (0 when undecided)
//! u64  started_at, nanoseconds since the Unix epoch
//! u32  participants, then for each:
//!      name, kind: u32 length + UTF-8; data: u32 length + bytes
//!      3 times (try, confirm, cancel): u32 attempts, u8 succeeded,
//!      u8 has_error, [u32 length + UTF-8 last error]
//! ```
//!
//! An outcome (format 1): `u8 format = 1, u8 decision, u64 started_at,
//! u64 finished_at`.
//!
//! The leading format byte is what keeps the file readable across versions:
//! a later version that adds a field writes format 2 and still reads 1; this
//! version refuses a format it does not know with
//! [`LogErrorKind::Corrupt`], naming it, rather than misreading it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::state::{Outcome, Stored};
use super::{
    Decision, Intent, LogError, LogErrorKind, ParticipantEntry, PhaseProgress, Status,
    TransactionRecord,
};
use crate::TransactionId;

const FORMAT: u8 = 1;

fn nanos(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn time(nanos: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(nanos)
}

fn decision_byte(decision: Decision) -> u8 {
    match decision {
        Decision::Confirm => 0,
        Decision::Cancel => 1,
    }
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    // A participant's data above 4 GiB cannot be written; the engine's
    // payloads are small serde_json documents.
    let len = u32::try_from(bytes.len()).expect("a log field is under 4 GiB");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(bytes);
}

/// The bytes of a record.
pub(crate) fn encode(stored: &Stored) -> Vec<u8> {
    let record = &stored.record;
    let mut out = Vec::with_capacity(64 + record.intent.participants.len() * 64);
    out.push(FORMAT);
    out.extend_from_slice(&stored.epoch.to_le_bytes());
    let (status, decision) = match record.status {
        Status::Undecided => (0, 0),
        Status::Decided(d) => (1, decision_byte(d)),
        Status::NeedsRepair(d) => (2, decision_byte(d)),
        // A finished transaction is kept as an outcome, never as a record.
        Status::Done(_) => unreachable!("a finished transaction has no record"),
    };
    out.push(status);
    out.push(decision);
    out.extend_from_slice(&nanos(record.started_at).to_le_bytes());
    let count = u32::try_from(record.intent.participants.len()).expect("under 4 G participants");
    out.extend_from_slice(&count.to_le_bytes());
    for (index, participant) in record.intent.participants.iter().enumerate() {
        put_bytes(&mut out, participant.name.as_bytes());
        put_bytes(&mut out, participant.kind.as_bytes());
        put_bytes(&mut out, &participant.data);
        let progress = record.progress.get(index).cloned().unwrap_or_default();
        for phase in &progress {
            out.extend_from_slice(&phase.attempts.to_le_bytes());
            out.push(u8::from(phase.succeeded));
            match &phase.last_error {
                Some(error) => {
                    out.push(1);
                    put_bytes(&mut out, error.as_bytes());
                }
                None => out.push(0),
            }
        }
    }
    out
}

/// Reads what [`encode`] wrote, refusing anything else.
pub(crate) fn decode(id: TransactionId, bytes: &[u8]) -> Result<Stored, LogError> {
    let mut r = Reader { bytes, id };
    r.format()?;
    let epoch = r.u64()?;
    let status = r.u8()?;
    let decision = r.decision()?;
    let status = match status {
        0 => Status::Undecided,
        1 => Status::Decided(decision),
        2 => Status::NeedsRepair(decision),
        other => return Err(r.corrupt(&format!("unknown status {other}"))),
    };
    let started_at = time(r.u64()?);
    let count = r.u32()? as usize;
    // Each participant takes at least 30 bytes: a count beyond what is left is
    // corruption, and must not become a huge allocation.
    if count > r.bytes.len() / 30 {
        return Err(r.corrupt("participant count beyond the record's length"));
    }
    let mut participants = Vec::with_capacity(count);
    let mut progress = Vec::with_capacity(count);
    for _ in 0..count {
        participants.push(ParticipantEntry {
            name: r.string()?,
            kind: r.string()?,
            data: r.bytes()?.to_vec(),
        });
        let mut phases: [PhaseProgress; 3] = Default::default();
        for phase in &mut phases {
            phase.attempts = r.u32()?;
            phase.succeeded = r.u8()? != 0;
            phase.last_error = match r.u8()? {
                0 => None,
                _ => Some(r.string()?),
            };
        }
        progress.push(phases);
    }
    if !r.bytes.is_empty() {
        return Err(r.corrupt("trailing bytes"));
    }
    Ok(Stored {
        record: TransactionRecord {
            intent: Intent { id, participants },
            status,
            progress,
            started_at,
        },
        epoch,
    })
}

pub(crate) const OUTCOME_LEN: usize = 18;

pub(crate) fn encode_outcome(outcome: &Outcome) -> [u8; OUTCOME_LEN] {
    let mut out = [0; OUTCOME_LEN];
    out[0] = FORMAT;
    out[1] = decision_byte(outcome.decision);
    out[2..10].copy_from_slice(&nanos(outcome.started_at).to_le_bytes());
    out[10..18].copy_from_slice(&nanos(outcome.finished_at).to_le_bytes());
    out
}

pub(crate) fn decode_outcome(id: TransactionId, bytes: &[u8]) -> Result<Outcome, LogError> {
    let mut r = Reader { bytes, id };
    r.format()?;
    let outcome = Outcome {
        decision: r.decision()?,
        started_at: time(r.u64()?),
        finished_at: time(r.u64()?),
    };
    Ok(outcome)
}

struct Reader<'a> {
    bytes: &'a [u8],
    id: TransactionId,
}

impl<'a> Reader<'a> {
    fn corrupt(&self, what: &str) -> LogError {
        LogError::new(
            LogErrorKind::Corrupt,
            format!(
                "the log's record of transaction {} is unreadable: {what}",
                self.id
            ),
        )
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], LogError> {
        if self.bytes.len() < n {
            return Err(self.corrupt("cut short"));
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }

    fn format(&mut self) -> Result<(), LogError> {
        match self.u8()? {
            FORMAT => Ok(()),
            other => Err(self.corrupt(&format!(
                "written in format {other}, this version of tcc reads format {FORMAT}"
            ))),
        }
    }

    fn u8(&mut self) -> Result<u8, LogError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, LogError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn u64(&mut self) -> Result<u64, LogError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }

    fn decision(&mut self) -> Result<Decision, LogError> {
        match self.u8()? {
            0 => Ok(Decision::Confirm),
            1 => Ok(Decision::Cancel),
            other => Err(self.corrupt(&format!("unknown decision {other}"))),
        }
    }

    fn bytes(&mut self) -> Result<&'a [u8], LogError> {
        let len = self.u32()? as usize;
        self.take(len)
    }

    fn string(&mut self) -> Result<String, LogError> {
        let bytes = self.bytes()?;
        String::from_utf8(bytes.to_vec()).map_err(|_| self.corrupt("a name that is not UTF-8"))
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
                status: Status::NeedsRepair(Decision::Cancel),
                progress,
                started_at: time(1_234_567_890_123),
            },
            epoch: 42,
        }
    }

    #[test]
    fn a_record_reads_back_as_written() {
        let stored = sample();
        let bytes = encode(&stored);
        assert_eq!(decode(stored.id(), &bytes).unwrap(), stored);
    }

    #[test]
    fn every_cut_and_an_unknown_format_are_refused_not_misread() {
        let stored = sample();
        let bytes = encode(&stored);
        for len in 0..bytes.len() {
            let error = decode(stored.id(), &bytes[..len]).unwrap_err();
            assert_eq!(error.kind(), LogErrorKind::Corrupt, "cut at {len}");
        }
        let mut newer = bytes.clone();
        newer[0] = 2;
        let error = decode(stored.id(), &newer).unwrap_err();
        assert!(error.to_string().contains("format 2"), "{error}");
        assert!(
            error.to_string().contains(&stored.id().to_string()),
            "{error}"
        );
    }

    #[test]
    fn an_outcome_reads_back_as_written() {
        let outcome = Outcome {
            decision: Decision::Confirm,
            started_at: time(5),
            finished_at: time(9),
        };
        let id = TransactionId::from_u128(1);
        assert_eq!(
            decode_outcome(id, &encode_outcome(&outcome)).unwrap(),
            outcome
        );
    }
}
