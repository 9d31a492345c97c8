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
