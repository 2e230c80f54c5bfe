//! Session tickets any worker of a gateway can open: a TLS client that resumes lands on
//! whichever worker the kernel picks (SO_REUSEPORT), so every worker must hold the same keys.
//!
//! Each [`PERIOD_SECS`] period has a key of its own, drawn at random by the first worker that
//! seals a ticket in it and kept in the host's shared region (one slot per period parity), so
//! every worker of the host, and every worker a reload starts, uses it. A ticket is accepted
//! during its period and the next. The slot of period `p` is overwritten when period `p + 2`
//! draws its key, and a worker that finds a slot older than the previous period wipes it: at
//! any time the region holds at most the current and the previous key. Nothing derives keys
//! from a long-lived secret, so a memory disclosure yields those two keys, never past or
//! future ones, and a recorded session resumed with an older ticket stays sealed.
//!
//! A USR2 upgrade maps a new region: [`handover`] gives the new binary the two keys (through
//! the supervisor's hand-over pipe) and [`adopt`] puts them in its region, so tickets issued
//! before the upgrade still resume after it.
//!
//! Tickets are sealed with ChaCha20-Poly1305: `period (8 bytes) ‖ nonce (12) ‖ ciphertext ‖ tag`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

use crate::host::region::TicketSlot;
use crate::host::Host;

/// How long one ticket key is used to seal new tickets.
pub const PERIOD_SECS: u64 = 6 * 3600;

/// Set in a slot's tag while a worker writes its key.
const BUSY: u64 = 1 << 63;

/// rustls's ticket producer over the host's period keys.
pub struct SharedTicketer {
    slots: &'static [TicketSlot; 2],
    rng: SystemRandom,
    /// What a ticket is bound to besides its period (the client-verification settings'
    /// fingerprint): authenticated with it, so a ticket sealed under other settings never
    /// opens.
    binding: [u8; 32],
}

impl std::fmt::Debug for SharedTicketer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedTicketer(..)")
    }
}

fn read_key(slot: &TicketSlot) -> [u8; 32] {
    let mut key = [0u8; 32];
    for (chunk, word) in key.chunks_mut(8).zip(&slot.key) {
        chunk.copy_from_slice(&word.load(Ordering::Acquire).to_le_bytes());
    }
    key
}

fn write_key(slot: &TicketSlot, key: &[u8; 32]) {
    for (chunk, word) in key.chunks(8).zip(&slot.key) {
        word.store(u64::from_le_bytes(chunk.try_into().expect("8 bytes")), Ordering::Release);
    }
}

fn wipe(slot: &TicketSlot, tag: u64) {
    // Only the slot as it was seen: a worker that just drew a newer key keeps it.
    if slot.tag.compare_exchange(tag, BUSY, Ordering::AcqRel, Ordering::Acquire).is_ok() {
        slot.key.iter().for_each(|w| w.store(0, Ordering::Release));
        slot.tag.store(0, Ordering::Release);
    }
}

fn aead_key(key: &[u8; 32]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, key).expect("a 32-byte key"))
}

impl SharedTicketer {
    /// A ticketer over `host`'s key slots, its tickets bound to `binding`.
    pub fn new(host: Host, binding: [u8; 32]) -> Self {
        SharedTicketer { slots: host.ticket_slots(), rng: SystemRandom::new(), binding }
    }

    /// The additional data a ticket is sealed with: its period and the binding.
    fn aad(&self, period: u64) -> Aad<[u8; 40]> {
        let mut aad = [0u8; 40];
        aad[..8].copy_from_slice(&period.to_be_bytes());
        aad[8..].copy_from_slice(&self.binding);
        Aad::from(aad)
    }

    fn period_now() -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) / PERIOD_SECS
    }

    fn slot(&self, period: u64) -> &TicketSlot {
        &self.slots[(period % 2) as usize]
    }

    /// Wipes the other slot when it holds a key older than the previous period.
    fn forget_old(&self, now: u64) {
        let other = self.slot(now + 1);
        let tag = other.tag.load(Ordering::Acquire);
        if tag != 0 && tag & BUSY == 0 && tag < now {
            wipe(other, tag);
        }
    }

    /// The key of `period`, drawn now if this is its first ticket. `None` while another worker
    /// writes it (that ticket is not issued: the client does a full handshake next time).
    fn sealing_key(&self, period: u64) -> Option<[u8; 32]> {
        let slot = self.slot(period);
        let want = period + 1;
        let tag = slot.tag.load(Ordering::Acquire);
        if tag == want {
            return self.opening_key(period);
        }
        let (busy, of) = (tag & BUSY != 0, tag & !BUSY);
        // A newer period's key (a clock step back), or this one's being written: no ticket.
        // A busy slot of an older period is a writer that died: taken over.
        if of > want || (busy && of == want) {
            return None;
        }
        slot.tag.compare_exchange(tag, BUSY | want, Ordering::AcqRel, Ordering::Acquire).ok()?;
        let mut key = [0u8; 32];
        if self.rng.fill(&mut key).is_err() {
            slot.tag.store(tag, Ordering::Release);
            return None;
        }
        write_key(slot, &key);
        slot.tag.store(want, Ordering::Release);
        Some(key)
    }

    /// The key of `period`, when the region still holds it (read twice around the tag, so a
    /// key being replaced is never half read).
    fn opening_key(&self, period: u64) -> Option<[u8; 32]> {
        let slot = self.slot(period);
        let tag = |s: &AtomicU64| s.load(Ordering::Acquire);
        if tag(&slot.tag) != period + 1 {
            return None;
        }
        let key = read_key(slot);
        (tag(&slot.tag) == period + 1).then_some(key)
    }

    fn seal(&self, period: u64, plain: &[u8]) -> Option<Vec<u8>> {
        self.forget_old(period);
        let key = aead_key(&self.sealing_key(period)?);
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).ok()?;
        let mut out = Vec::with_capacity(8 + NONCE_LEN + plain.len() + aead::MAX_TAG_LEN);
        out.extend_from_slice(&period.to_be_bytes());
        out.extend_from_slice(&nonce);
        let mut sealed = plain.to_vec();
        let aad = self.aad(period);
        key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), aad, &mut sealed).ok()?;
        out.extend_from_slice(&sealed);
        Some(out)
    }

    fn open(&self, now: u64, ticket: &[u8]) -> Option<Vec<u8>> {
        self.forget_old(now);
        if ticket.len() < 8 + NONCE_LEN + aead::MAX_TAG_LEN {
            return None;
        }
        let period = u64::from_be_bytes(ticket[..8].try_into().ok()?);
        if period != now && period.checked_add(1) != Some(now) {
            return None;
        }
        let key = aead_key(&self.opening_key(period)?);
        let nonce = Nonce::try_assume_unique_for_key(&ticket[8..8 + NONCE_LEN]).ok()?;
        let mut sealed = ticket[8 + NONCE_LEN..].to_vec();
        let aad = self.aad(period);
        let plain = key.open_in_place(nonce, aad, &mut sealed).ok()?;
        Some(plain.to_vec())
    }
}

/// The hand-over format's first bytes: a binary that does not know them ignores the rest.
const HANDOVER_MAGIC: &[u8] = b"zkgate-ticket-keys/1\n";

/// The host's ticket keys, for the binary a USR2 starts: `magic ‖ (tag ‖ key) per key held`.
/// Empty when the region holds none (no ticket was issued yet).
pub fn handover(host: Host) -> Vec<u8> {
    // Sized once: a buffer grown while filling would leave key bytes in freed memory.
    let mut out = Vec::with_capacity(HANDOVER_MAGIC.len() + 2 * (8 + 32));
    for slot in host.ticket_slots() {
        let tag = slot.tag.load(Ordering::Acquire);
        if tag == 0 || tag & BUSY != 0 {
            continue;
        }
        let key = read_key(slot);
        if slot.tag.load(Ordering::Acquire) != tag {
            continue;
        }
        if out.is_empty() {
            out.extend_from_slice(HANDOVER_MAGIC);
        }
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&key);
    }
    out
}

/// Puts the keys a previous binary handed over into `host`'s region (before any worker
/// starts). Keys older than the previous period are dropped, as the ticketer would; anything
/// not in the format is ignored. Returns how many keys were taken.
pub fn adopt(host: Host, state: &[u8]) -> usize {
    let Some(entries) = state.strip_prefix(HANDOVER_MAGIC) else { return 0 };
    let now = SharedTicketer::period_now();
    let mut taken = 0;
    for entry in entries.chunks_exact(8 + 32) {
        let tag = u64::from_le_bytes(entry[..8].try_into().expect("8 bytes"));
        let period = tag.wrapping_sub(1);
        if tag == 0 || tag & BUSY != 0 || period.saturating_add(1) < now || period > now {
            continue;
        }
        let slot = &host.ticket_slots()[(period % 2) as usize];
        write_key(slot, entry[8..].try_into().expect("32 bytes"));
        slot.tag.store(tag, Ordering::Release);
        taken += 1;
    }
    taken
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
        let host = Host::local(0);
        let (issuer, other) =
            (SharedTicketer::new(host, [0; 32]), SharedTicketer::new(host.for_slot(1), [0; 32]));
        let ticket = issuer.seal(100, b"session state").unwrap();
        assert_eq!(other.open(100, &ticket).as_deref(), Some(&b"session state"[..]));
        assert_eq!(other.open(101, &ticket).as_deref(), Some(&b"session state"[..]));
        assert_eq!(other.open(102, &ticket), None, "expired after two periods");
        let mut forged = ticket.clone();
        *forged.last_mut().unwrap() ^= 1;
        assert_eq!(other.open(100, &forged), None);
        let stranger = SharedTicketer::new(Host::local(0), [0; 32]);
        assert_eq!(stranger.open(100, &ticket), None, "another gateway's keys");
        let rebound = SharedTicketer::new(host.for_slot(1), [7; 32]);
        assert_eq!(rebound.open(100, &ticket), None, "sealed under other client settings");
    }

    #[test]
    fn keys_handed_over_open_the_tickets_they_sealed_in_another_region() {
        let before = Host::local(0);
        let now = SharedTicketer::period_now();
        let old = SharedTicketer::new(before, [0; 32]);
        let previous = old.seal(now - 1, b"previous").unwrap();
        let current = old.seal(now, b"current").unwrap();
        let state = handover(before);
        let after = Host::local(0);
        assert_eq!(adopt(after, &state), 2);
        let new = SharedTicketer::new(after, [0; 32]);
        assert_eq!(new.open(now, &previous).as_deref(), Some(&b"previous"[..]));
        assert_eq!(new.open(now, &current).as_deref(), Some(&b"current"[..]));
        // The new region seals with the adopted key: the old binary's workers, still draining,
        // open tickets the new ones issue.
        assert_eq!(new.sealing_key(now), old.opening_key(now));
        assert_eq!(adopt(Host::local(0), b"something else"), 0);
        assert!(handover(Host::local(0)).is_empty(), "no key, nothing to hand over");
    }

    #[test]
    fn keys_of_an_old_period_are_not_adopted() {
        let before = Host::local(0);
        let now = SharedTicketer::period_now();
        let _ = SharedTicketer::new(before, [0; 32]).seal(now - 2, b"x").unwrap();
        assert_eq!(adopt(Host::local(0), &handover(before)), 0);
    }

    #[test]
    fn each_period_draws_a_key_of_its_own_and_old_keys_are_erased() {
        let host = Host::local(0);
        let t = SharedTicketer::new(host, [0; 32]);
        let k100 = t.sealing_key(100).unwrap();
        assert_eq!(t.sealing_key(100), Some(k100), "one key per period, for every ticket");
        let k101 = t.sealing_key(101).unwrap();
        assert_ne!(k100, k101, "drawn, not derived: no key tells another");
        // Period 102 reuses 100's slot: its key is gone, 101's stays for one more period.
        let k102 = t.sealing_key(102).unwrap();
        assert!(![k100, k101].contains(&k102));
        assert_eq!(t.opening_key(100), None);
        assert_eq!(t.opening_key(101), Some(k101));
        // Quiet until period 104: the first ticket then finds 101's key older than the
        // previous period and wipes it, so only 104's key is left in the region.
        let _ = t.seal(104, b"x").unwrap();
        assert_eq!(t.opening_key(103), None);
        assert!(
            host.ticket_slots().iter().filter(|s| s.tag.load(Ordering::Relaxed) != 0).count() == 1
        );
    }
}
