//! The backend's answers to the extended protocol's bookkeeping messages (Parse, Bind,
//! Close, Describe): the prepared statements, portals and portal descriptions they leave, as
//! the server has them; and their errors, after which the server skips the rest up to Sync.

use bytes::BytesMut;

use super::super::state::{Phase, Sent, Step};
use super::super::wire;
use super::reply::{Kind, Reply};
use super::{Ended, Noted, Session, ended};

impl Session {
    /// A reply to Parse, Bind, Close or Describe (their errors aside).
    pub(super) fn extended_reply(
        &mut self,
        kind: Kind,
        tag: u8,
        body: &[u8],
    ) -> Result<Reply, Ended> {
        use {Kind as K, Phase as P};
        match (kind, self.protocol.phase, tag) {
            (K::Parse, P::Start, b'1') => self.parse_complete(),
            (K::Bind, P::Start, b'2') => self.bind_complete(),
            (K::Close, P::Start, b'3') => self.close_complete(),
            (K::DescribeStatement, P::Start, b't') => self.protocol.phase = P::Parameters,
            (K::DescribeStatement, P::Parameters, b'T' | b'n') => {
                self.finish();
            }
            (K::DescribePortal, P::Start, b'T' | b'n') => {
                // The answer to a Describe the agent added is the agent's alone.
                if self.portal_described(tag, body)? {
                    return Ok(Reply::Answered(None));
                }
            }
            _ => return Ok(Reply::Unexpected),
        }
        Ok(Reply::Relay(None))
    }

    /// ParseComplete: the statement is prepared as the server has it (or, denied, dropped).
    fn parse_complete(&mut self) {
        if let Some(Sent {
            step: Step::Parse {
                name, statement, ..
            },
            ..
        }) = self.finish()
        {
            match statement {
                Some(statement) => self.prepared.insert(name, statement),
                None => self.prepared.remove(&name),
            };
        }
    }

    /// BindComplete: the portal runs the statement its Bind named.
    fn bind_complete(&mut self) {
        if let Some(Sent {
            step: Step::Bind { portal, statement },
            ..
        }) = self.finish()
        {
            self.descriptions.remove(&portal);
            match self.prepared.get(&statement).cloned() {
                Some(statement) => self.portals.insert(portal, statement),
                None => self.portals.remove(&portal),
            };
        }
    }

    /// CloseComplete: the statement or portal is gone.
    fn close_complete(&mut self) {
        if let Some(Sent {
            step: Step::Close { portal, name },
            ..
        }) = self.finish()
        {
            if portal {
                self.portals.remove(&name);
                self.descriptions.remove(&name);
            } else {
                self.prepared.remove(&name);
            }
        }
    }

    /// A portal's description (`tag`: RowDescription or NoData), kept for masking its rows.
    /// `Ok(true)`: the Describe was the agent's own, so the answer is not the skill's.
    fn portal_described(&mut self, tag: u8, body: &[u8]) -> Result<bool, Ended> {
        let columns = match tag {
            b'T' => Some(
                wire::row_description(body)
                    .ok_or_else(|| ended("08P01", "malformed RowDescription"))?,
            ),
            _ => None,
        };
        if let Some(Sent {
            step:
                Step::Describe {
                    portal: Some(portal),
                    agent,
                },
            ..
        }) = self.finish()
        {
            match columns {
                Some(columns) => self.descriptions.insert(portal, columns),
                None => self.descriptions.remove(&portal),
            };
            return Ok(agent);
        }
        Ok(false)
    }

    /// An extended-protocol message's error: recorded, and the server skips the rest of the
    /// batch up to Sync (`phase`: where its answer had come).
    pub(super) fn extended_error(
        &mut self,
        phase: Phase,
        message: &[u8],
        out: &mut BytesMut,
    ) -> Result<Noted, Ended> {
        if phase == Phase::CopyIn {
            self.protocol
                .copy_in_ended(false)
                .map_err(|reason| ended("08P01", reason))?;
        }
        let noted = self.error(message, out);
        match self.protocol.front().map(|s| &s.step) {
            // A failed Parse of the unnamed statement has dropped the old one.
            Some(Step::Parse { name, .. }) if name.is_empty() => {
                self.prepared.remove("");
            }
            Some(Step::Bind { portal, .. }) => {
                self.portals.remove(portal);
                self.descriptions.remove(portal);
            }
            _ => {}
        }
        self.run = None;
        self.tx_masked |= self.protocol.fail_extended();
        Ok(noted)
    }
}
