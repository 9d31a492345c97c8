//! Directory messages between nodes/designers and a bootstrap.
//!
//! They travel over libp2p request-response with its CBOR codec, whose size
//! caps are set from [`MAX_DIRECTORY_REQUEST_BYTES`] and
//! [`MAX_DIRECTORY_RESPONSE_BYTES`]; [`DirectoryRequest::decode`] and
//! friends apply the same limits for any other transport. A bootstrap is not
//! trusted: a client verifies every descriptor it receives.

use serde::{Deserialize, Serialize};

use crate::cbor::{self, CborError};
use crate::descriptor::{MAX_SIGNED_DESCRIPTOR_BYTES, SignedDescriptor};

/// The libp2p protocol name of the directory.
pub const DIRECTORY_PROTOCOL: &str = "/mixnn/directory/1.0.0";
/// At most this many descriptors in one list response.
pub const MAX_LIST_ENTRIES: u32 = 512;
/// A client reads at most this many entries from one bootstrap, whatever
/// `total` the bootstrap claims: a bound on the pages it asks for and on
/// what it keeps. A bootstrap should hold no more (its default is 10,000).
pub const MAX_DIRECTORY_ENTRIES: u32 = 16_384;
/// A request is one descriptor at most.
pub const MAX_DIRECTORY_REQUEST_BYTES: usize = MAX_SIGNED_DESCRIPTOR_BYTES + 64;
/// A response is a full page of descriptors at most.
pub const MAX_DIRECTORY_RESPONSE_BYTES: usize =
    MAX_LIST_ENTRIES as usize * (MAX_SIGNED_DESCRIPTOR_BYTES + 16) + 1024;

/// What a client asks a bootstrap.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DirectoryRequest {
    /// Store this descriptor (it replaces an older one of the same peer).
    Publish(SignedDescriptor),
    /// The current descriptors, ordered by peer id, from `offset`, at most
    /// `limit` (capped at [`MAX_LIST_ENTRIES`]).
    List {
        /// Index of the first entry to return (number of entries to skip).
        offset: u32,
        /// Most entries to return; the bootstrap caps it at
        /// [`MAX_LIST_ENTRIES`].
        limit: u32,
    },
}

/// What a bootstrap answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DirectoryResponse {
    /// The descriptor is stored (or an equally new one already was).
    Published,
    /// The descriptor was refused; `reason` says why (bad signature, expired,
    /// older than the stored one, directory full).
    Rejected {
        /// Human-readable cause of the refusal.
        reason: String,
    },
    /// A page of the directory; `total` is the number of entries it holds.
    Descriptors {
        /// This page's descriptors, unverified; at most [`MAX_LIST_ENTRIES`].
        entries: Vec<SignedDescriptor>,
        /// Number of entries the directory holds in all (saturates at
        /// `u32::MAX`), for paging.
        total: u32,
    },
}

impl DirectoryRequest {
    /// Encodes as CBOR; fails above [`MAX_DIRECTORY_REQUEST_BYTES`].
    pub fn encode(&self) -> Result<Vec<u8>, CborError> {
        cbor::encode("directory request", self, MAX_DIRECTORY_REQUEST_BYTES)
    }
    /// Decodes CBOR, refusing input above [`MAX_DIRECTORY_REQUEST_BYTES`]
    /// before parsing. A published descriptor is not verified here.
    pub fn decode(bytes: &[u8]) -> Result<Self, CborError> {
        cbor::decode("directory request", bytes, MAX_DIRECTORY_REQUEST_BYTES)
    }
}

impl DirectoryResponse {
    /// Encodes as CBOR; fails above [`MAX_DIRECTORY_RESPONSE_BYTES`].
    pub fn encode(&self) -> Result<Vec<u8>, CborError> {
        cbor::encode("directory response", self, MAX_DIRECTORY_RESPONSE_BYTES)
    }
    /// Decodes CBOR, refusing input above [`MAX_DIRECTORY_RESPONSE_BYTES`]
    /// before parsing, then applies [`check_limits`](Self::check_limits).
    /// Descriptors are not verified here.
    pub fn decode(bytes: &[u8]) -> Result<Self, CborError> {
        let r: Self = cbor::decode("directory response", bytes, MAX_DIRECTORY_RESPONSE_BYTES)?;
        r.check_limits()?;
        Ok(r)
    }

    /// Refuses a list page longer than [`MAX_LIST_ENTRIES`]; clients call it
    /// on responses that arrived through another decoder.
    pub fn check_limits(&self) -> Result<(), CborError> {
        if let Self::Descriptors { entries, .. } = self
            && entries.len() > MAX_LIST_ENTRIES as usize
        {
            return Err(CborError::TooLarge {
                what: "directory page (entries)",
                len: entries.len(),
                max: MAX_LIST_ENTRIES as usize,
            });
        }
        Ok(())
    }
}

/// Why a list page is refused by [`ListCursor::accept`].
#[derive(Debug, thiserror::Error)]
pub enum ListError {
    /// The page is over the protocol's limits.
    #[error(transparent)]
    Limits(#[from] CborError),
    /// A list request was answered with something else.
    #[error("unexpected answer to a list request")]
    UnexpectedAnswer,
}

/// Walks a bootstrap's list pages with every count it reads bounded: at
/// most [`MAX_LIST_ENTRIES`] per page, at most [`MAX_DIRECTORY_ENTRIES`] in
/// all however large the claimed `total`, and the walk ends at the first
/// short page (an honest bootstrap sends full pages until the end), so a
/// bootstrap cannot keep a client asking.
#[derive(Clone, Debug, Default)]
pub struct ListCursor {
    offset: u32,
    done: bool,
}

impl ListCursor {
    /// A walk from the first entry.
    pub fn new() -> Self {
        Self::default()
    }

    /// The next page to ask for, or `None` once the walk is over.
    pub fn request(&self) -> Option<DirectoryRequest> {
        (!self.done).then_some(DirectoryRequest::List {
            offset: self.offset,
            limit: MAX_LIST_ENTRIES,
        })
    }

    /// Entries read so far.
    pub fn read(&self) -> u32 {
        self.offset
    }

    /// Takes the answer to [`request`](Self::request): its entries
    /// (unverified), cut so the walk never passes [`MAX_DIRECTORY_ENTRIES`].
    pub fn accept(
        &mut self,
        response: DirectoryResponse,
    ) -> Result<Vec<SignedDescriptor>, ListError> {
        response.check_limits()?;
        let DirectoryResponse::Descriptors { mut entries, total } = response else {
            self.done = true;
            return Err(ListError::UnexpectedAnswer);
        };
        let end = total.min(MAX_DIRECTORY_ENTRIES);
        let room = MAX_DIRECTORY_ENTRIES.saturating_sub(self.offset) as usize;
        let full = entries.len() == MAX_LIST_ENTRIES as usize;
        entries.truncate(room);
        self.offset = self.offset.saturating_add(entries.len() as u32);
        self.done = !full || self.offset >= end;
        Ok(entries)
    }
}
