//! Which slots a fire dispatches, and the deterministic id of each slot's job.

use crate::clock::Millis;

use super::{Missed, Schedule, to_millis, to_zoned};

/// The most jobs one fire dispatches. More due slots (a long on-time window on a fast schedule)
/// are dispatched by further fires in the same tick, so one atomic step stays bounded.
pub(crate) const MAX_SLOTS_PER_FIRE: usize = 1_000;

/// What one fire of a schedule does, for a stored cursor and the current time.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Due {
    /// The slots that dispatch a job, oldest first.
    pub(crate) fire: Vec<Millis>,
    /// The new cursor: the latest slot handled (dispatched or skipped); `None` if no slot is due.
    pub(crate) cursor: Option<Millis>,
    /// More slots are due after `cursor` (the fire was capped): fire again at once.
    pub(crate) more: bool,
}

impl Schedule {
    /// The slots in `(cursor, now]` and what the policy does with them.
    ///
    /// A slot at or after `now - missed_after` is on time and always fires. Earlier ones are
    /// missed: they are walked backwards from the on-time window, so the cost depends on how
    /// many the policy keeps, not on how long the pause was (a year of a schedule every second
    /// is one step for [`Missed::Skip`]).
    pub(crate) fn due(&self, cursor: Millis, now: Millis) -> Due {
        let mut due = Due::default();
        if now <= cursor {
            return due;
        }
        let late = i64::try_from(self.definition.missed_after_ms).unwrap_or(i64::MAX);
        let on_time_from = now.saturating_sub(late);

        let keep = match self.definition.missed {
            Missed::Skip => 0,
            Missed::Once => 1,
            Missed::All { max } => usize::try_from(max).unwrap_or(usize::MAX),
        }
        .min(MAX_SLOTS_PER_FIRE);
        let mut latest_missed = None;
        if on_time_from > cursor.saturating_add(1)
            && let Some(from) = to_zoned(on_time_from, &self.tz)
        {
            // `next_back` steps to the slot strictly before the last one seen.
            let mut back = self.cron.after(from);
            while let Some(slot) = back.next_back().map(|z| to_millis(&z)) {
                if slot <= cursor {
                    break;
                }
                latest_missed.get_or_insert(slot);
                if due.fire.len() >= keep {
                    break;
                }
                due.fire.push(slot);
            }
            due.fire.reverse();
        }

        // On-time slots: strictly after both the cursor and the last missed instant.
        let budget = MAX_SLOTS_PER_FIRE.saturating_sub(due.fire.len());
        let start = cursor.max(on_time_from.saturating_sub(1));
        let mut on_time = Vec::new();
        for slot in self.upcoming(start) {
            if slot > now {
                break;
            }
            if on_time.len() == budget {
                due.more = true;
                break;
            }
            on_time.push(slot);
        }
        due.cursor = on_time.last().copied().or(latest_missed);
        due.fire.extend(on_time);
        due
    }
}

/// The id of the job a schedule dispatches for `slot`: a ULID whose time is the slot and whose
/// random part is a stable hash of the schedule's name. The same slot always gets the same id,
/// on every machine and every version, so a slot dispatched twice (which the cursor's
/// compare-and-set already prevents) would still be stored once.
pub fn slot_job_id(schedule: &str, slot: Millis) -> String {
    let time = u64::try_from(slot).unwrap_or(0);
    // The top 80 bits: FNV-1a mixes the last bytes into the low bits least.
    let random = fnv1a_128(schedule.as_bytes()) >> 48;
    ulid::Ulid::from_parts(time, random).to_string()
}

/// 128-bit FNV-1a: small, specified, and the same on every platform and Rust version (unlike
/// `std`'s `DefaultHasher`, whose output may change between releases).
fn fnv1a_128(bytes: &[u8]) -> u128 {
    const OFFSET: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    const PRIME: u128 = 0x0000_0000_0100_0000_0000_0000_0000_013b;
    bytes.iter().fold(OFFSET, |hash, byte| (hash ^ u128::from(*byte)).wrapping_mul(PRIME))
}

#[cfg(test)]
pub(super) fn fnv1a_128_for_tests(bytes: &[u8]) -> u128 {
    fnv1a_128(bytes)
}
