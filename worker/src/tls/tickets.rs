//! Session tickets any worker of a gateway can open: a TLS client that resumes lands on
//! whichever worker the kernel picks (SO_REUSEPORT), so every worker must hold the same keys.
//!
//! The gateway draws one secret before the first fork and hands it to every worker (it stays
//! across reloads). Ticket keys are derived from it per period (HKDF-SHA256 of the period
//! number): all workers compute the same key without talking, keys roll every [`PERIOD_SECS`],
//! and a ticket is accepted during its period and the next. Tickets are sealed with
//! ChaCha20-Poly1305: `period (8 bytes) ‖ nonce (12) ‖ ciphertext ‖ tag`.

use std::time::{SystemTime, UNIX_EPOCH};

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};

/// How long one ticket key is used to seal new tickets.
pub const PERIOD_SECS: u64 = 6 * 3600;

/// The secret all workers derive ticket keys from.
#[derive(Clone)]
pub struct TicketSecret([u8; 32]);

impl std::fmt::Debug for TicketSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TicketSecret(..)")
    }
}

impl TicketSecret {
    /// A fresh random secret (drawn once per running gateway, before the first fork).
    pub fn generate() -> Result<Self, ring::error::Unspecified> {
        let mut bytes = [0u8; 32];
        SystemRandom::new().fill(&mut bytes)?;
        Ok(TicketSecret(bytes))
    }

    /// A fixed secret (tests).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        TicketSecret(bytes)
    }

    fn key(&self, period: u64) -> LessSafeKey {
        let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, b"zkgate session tickets");
        let prk = salt.extract(&self.0);
        let info = period.to_be_bytes();
        let info = [&info[..]];
        let okm =
            prk.expand(&info, &CHACHA20_POLY1305).expect("32-byte output is within HKDF's limit");
        let mut key = [0u8; 32];
        okm.fill(&mut key).expect("sized for the algorithm");
        LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &key).expect("a 32-byte key"))
    }
}

/// rustls's ticket producer over keys derived from a [`TicketSecret`].
#[derive(Debug)]
pub struct SharedTicketer {
    secret: TicketSecret,
    rng: SystemRandom,
}

impl SharedTicketer {
    /// A ticketer for `secret`.
    pub fn new(secret: TicketSecret) -> Self {
        SharedTicketer { secret, rng: SystemRandom::new() }
    }

    fn period_now() -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) / PERIOD_SECS
    }

    fn seal(&self, period: u64, plain: &[u8]) -> Option<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).ok()?;
        let mut out = Vec::with_capacity(8 + NONCE_LEN + plain.len() + aead::MAX_TAG_LEN);
        out.extend_from_slice(&period.to_be_bytes());
        out.extend_from_slice(&nonce);
        let mut sealed = plain.to_vec();
        let aad = Aad::from(period.to_be_bytes());
        self.secret
            .key(period)
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), aad, &mut sealed)
            .ok()?;
        out.extend_from_slice(&sealed);
        Some(out)
    }

    fn open(&self, now: u64, ticket: &[u8]) -> Option<Vec<u8>> {
        if ticket.len() < 8 + NONCE_LEN + aead::MAX_TAG_LEN {
            return None;
        }
        let period = u64::from_be_bytes(ticket[..8].try_into().ok()?);
        if period != now && period.checked_add(1) != Some(now) {
            return None;
        }
        let nonce = Nonce::try_assume_unique_for_key(&ticket[8..8 + NONCE_LEN]).ok()?;
        let mut sealed = ticket[8 + NONCE_LEN..].to_vec();
        let aad = Aad::from(period.to_be_bytes());
        let plain = self.secret.key(period).open_in_place(nonce, aad, &mut sealed).ok()?;
        Some(plain.to_vec())
    }
}

impl rustls::server::ProducesTickets for SharedTicketer {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        PERIOD_SECS as u32
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.seal(Self::period_now(), plain)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        self.open(Self::period_now(), cipher)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_worker_opens_a_ticket_in_its_period_and_the_next_only() {
        let secret = TicketSecret::from_bytes([7; 32]);
        let (issuer, other) = (SharedTicketer::new(secret.clone()), SharedTicketer::new(secret));
        let ticket = issuer.seal(100, b"session state").unwrap();
        assert_eq!(other.open(100, &ticket).as_deref(), Some(&b"session state"[..]));
        assert_eq!(other.open(101, &ticket).as_deref(), Some(&b"session state"[..]));
        assert_eq!(other.open(102, &ticket), None, "expired after two periods");
        let mut forged = ticket.clone();
        *forged.last_mut().unwrap() ^= 1;
        assert_eq!(other.open(100, &forged), None);
        let stranger = SharedTicketer::new(TicketSecret::from_bytes([8; 32]));
        assert_eq!(stranger.open(100, &ticket), None, "another gateway's secret");
    }
}
