//! The server's side of the protocol as the agent follows it: the frontend messages sent and
//! not yet answered, in the order the server takes them, and where the server is in answering
//! the oldest. PostgreSQL answers messages strictly in order, so every backend reply belongs
//! to the oldest unanswered message; which replies it may send depends on that message and on
//! how far its answer has come ([`Phase`]).
//!
//! After an error in the extended protocol (Parse, Bind, Describe, Execute, Close) the server
//! discards every message up to the next Sync, a simple Query or a FunctionCall included: the
//! messages still queued up to that Sync are dropped unanswered, and until the skill sends
//! one, new messages are not queued at all ([`Protocol::discarding`]). CopyDone and CopyFail
//! end a COPY FROM STDIN when the server is in one, and are ignored otherwise; the server
//! ignores Flush and Sync inside a COPY FROM STDIN. Flush and CopyData never get an answer of
//! their own and are not queued.

use std::collections::VecDeque;
use std::time::Instant;

use skillgate_policy::Mask;

/// A statement as the policy answered it: its mask (empty: none), lower-cased text and
/// decision id.
#[derive(Clone, Default)]
pub(super) struct Statement {
    pub mask: Mask,
    pub text: String,
    pub decision: Option<String>,
}

/// A denied statement's stand-in: the nonce the backend's error for it names, and the error
/// the skill gets instead.
#[derive(Clone)]
pub(super) struct Poison {
    pub nonce: String,
    pub message: String,
    pub detail: String,
    pub decision: Option<String>,
}

/// A frontend message the server has yet to answer.
#[derive(Clone)]
pub(super) enum Step {
    /// A simple Query (a FunctionCall goes out as a denied Query's stand-in).
    Query {
        statement: Statement,
        poison: Option<Poison>,
    },
    /// `statement` is `None` for a denied one (its stand-in fails).
    Parse {
        name: String,
        statement: Option<Statement>,
        poison: Option<Poison>,
    },
    Bind {
        portal: String,
        statement: String,
    },
    /// `portal`: `None` describes a statement. `agent`: the agent added it (the skill does
    /// not get its answer).
    Describe {
        portal: Option<String>,
        agent: bool,
    },
    Execute {
        portal: String,
    },
    Close {
        portal: bool,
        name: String,
    },
    Sync,
    /// CopyDone or CopyFail.
    CopyEnd,
}

/// A step, when it was sent, and whether it may run a statement decided with a mask.
pub(super) struct Sent {
    pub step: Step,
    pub at: Instant,
    pub masked: bool,
}

/// Where the server is in answering the oldest step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// Nothing of it answered yet (for a Query: between two of its statements).
    Start,
    /// A Query's statement was described: its rows, then CommandComplete.
    Rows,
    /// A Describe of a statement got its ParameterDescription: RowDescription or NoData next.
    Parameters,
    /// COPY FROM STDIN: the server takes CopyData until CopyDone or CopyFail.
    CopyIn,
    /// COPY TO STDOUT: CopyData until CopyDone.
    CopyOut,
    /// After COPY TO STDOUT's CopyDone: CommandComplete next.
    CopyOutDone,
    /// A Query (or a Sync's commit) failed: ReadyForQuery next.
    Failed,
}

/// The frontend messages in flight and the server's state in answering them.
pub(super) struct Protocol {
    queue: VecDeque<Sent>,
    pub phase: Phase,
    /// The server discards messages until a Sync the skill has yet to send.
    pub discarding: bool,
    /// The oldest step's answer has begun (see [`Protocol::begin`]).
    begun: bool,
}

impl Default for Protocol {
    fn default() -> Self {
        Self {
            queue: VecDeque::new(),
            phase: Phase::Start,
            discarding: false,
            begun: false,
        }
    }
}

impl Protocol {
    /// Queues a message the server will answer (the caller checks [`Self::discarding`]: a
    /// message the server discards is not queued).
    pub fn send(&mut self, step: Step, masked: bool) {
        if matches!(step, Step::Sync) {
            self.discarding = false;
        }
        self.queue.push_back(Sent {
            step,
            at: Instant::now(),
            masked,
        });
    }

    /// The oldest unanswered step, after dropping CopyDone and CopyFail the server ignores
    /// (outside a COPY FROM STDIN).
    pub fn front(&mut self) -> Option<&Sent> {
        while self.phase == Phase::Start
            && matches!(
                self.queue.front(),
                Some(Sent {
                    step: Step::CopyEnd,
                    ..
                })
            )
        {
            self.queue.pop_front();
        }
        self.queue.front()
    }

    /// `true` the first time it is called for the current oldest step: its answer begins.
    pub fn begin(&mut self) -> bool {
        !std::mem::replace(&mut self.begun, true)
    }

    /// The oldest step is answered.
    pub fn finish(&mut self) -> Option<Sent> {
        self.phase = Phase::Start;
        self.begun = false;
        self.queue.pop_front()
    }

    /// The oldest step, an extended-protocol message, failed: the server discards the rest up
    /// to the next Sync. Returns whether a dropped step may have run a masked statement.
    pub fn fail_extended(&mut self) -> bool {
        self.finish();
        let mut masked = false;
        while let Some(sent) = self.queue.front() {
            if matches!(sent.step, Step::Sync) {
                return masked;
            }
            masked |= sent.masked;
            self.queue.pop_front();
        }
        self.discarding = true;
        masked
    }

    /// The server left a COPY FROM STDIN (`ok`: with CommandComplete, else with an error):
    /// consumes the skill's CopyDone or CopyFail, and the Syncs the server ignored before it.
    /// `Err` when the queue cannot be matched to what the server did.
    pub fn copy_in_ended(&mut self, ok: bool) -> Result<(), String> {
        let end = self
            .queue
            .iter()
            .skip(1)
            .position(|s| matches!(s.step, Step::CopyEnd))
            .map(|at| at + 1);
        let before = end.unwrap_or(self.queue.len());
        let only_syncs = self
            .queue
            .iter()
            .take(before)
            .skip(1)
            .all(|s| matches!(s.step, Step::Sync));
        match (ok, end) {
            // Every message up to CopyDone was read inside the COPY: Syncs ignored.
            (true, Some(end)) if only_syncs => {
                self.queue.drain(1..=end);
                Ok(())
            }
            (true, _) => {
                Err("the backend ended a COPY FROM STDIN the skill did not end".to_owned())
            }
            // Failed inside the COPY with nothing but CopyData before the CopyDone or CopyFail
            // (if the skill sent one yet): whether the server read it or not, it is ignored.
            (false, _) if before == 1 => {
                if let Some(end) = end {
                    self.queue.remove(end);
                }
                Ok(())
            }
            // Messages between: whether the server read them inside the COPY (and ignored or
            // failed on them) or after its error cannot be told.
            (false, _) => Err(
                "a COPY FROM STDIN failed with other messages pipelined behind it; the agent \
                 cannot tell which of them the backend read"
                    .to_owned(),
            ),
        }
    }

    /// Whether a step in flight may run a statement decided with a mask.
    pub fn masked_in_flight(&self) -> bool {
        self.queue.iter().any(|s| s.masked)
    }
}
