//! A peer's persistent libp2p identity: the ed25519 seed in an owner-only
//! file ([`secret_file`](crate::secret_file)), turned into the keypair that
//! libp2p and Noise use.
//!
//! Why one function: the node and the bootstrap both keep their identity
//! across restarts (the bootstrap's multiaddr is in every node's
//! configuration; the node's peer id is in its descriptor), and both must
//! load it the same way. The designer takes a fresh identity per run so its
//! jobs stay unlinkable, and never calls this.

use std::path::Path;

use libp2p::identity::Keypair;
use zeroize::Zeroizing;

use crate::secret_file::{self, IDENTITY_SEED_LEN, SecretFileError};

/// A loaded (or newly created) identity.
pub struct Identity {
    /// The libp2p keypair (the peer id is derived from it).
    pub keypair: Keypair,
    /// The seed itself, for signers other than libp2p's (the node signs its
    /// descriptors with ed25519-dalek from the same seed).
    pub seed: Zeroizing<[u8; IDENTITY_SEED_LEN]>,
    /// Whether the file was created by this call.
    pub created: bool,
}

/// Loads the identity at `path`, or creates it (and its directory,
/// owner-only) if the file does not exist.
pub fn load_or_create(path: &Path) -> Result<Identity, SecretFileError> {
    let (seed, created) = secret_file::load_or_create_identity(path)?;
    // libp2p zeroizes the buffer it is given; the seed is kept intact.
    let mut copy = Zeroizing::new(*seed);
    let keypair =
        Keypair::ed25519_from_bytes(&mut copy[..]).map_err(|e| SecretFileError::Corrupt {
            path: path.to_path_buf(),
            reason: format!("not an ed25519 seed: {e}"),
        })?;
    Ok(Identity {
        keypair,
        seed,
        created,
    })
}
