//! Cancel and release notices from other workers (Redis pub/sub): a cancel
//! goes to the build when it is driven here, a release makes the foreign
//! builds it names adoption candidates at once.

use super::{Supervisor, adoption};
use crate::machine::Input;
use crate::store::Notice;

pub(super) async fn notice_loop(sup: Supervisor) {
    let mut rx = sup.ctx.store.notices();
    loop {
        let notice = tokio::select! {
            () = sup.stop.cancelled() => return,
            n = rx.recv() => match n { Some(n) => n, None => return },
        };
        match notice {
            Notice::Cancel(id) => {
                if sup.registry.owns(&id)
                    && let Some(reason) = cancel_reason(&sup, &id).await
                {
                    sup.registry.send(&id, Input::Cancel(reason));
                }
            }
            Notice::Released(ids) => {
                for (id, ns) in sup.registry.foreign_among(&ids) {
                    adoption::spawn(&sup, id, ns);
                }
            }
        }
    }
}

/// The cancel flagged for `id`, if any. A failed read is logged and
/// counted, and costs only time: the next renewal polls the flag again.
pub(super) async fn cancel_reason(sup: &Supervisor, id: &str) -> Option<String> {
    match sup.ctx.store.cancel_reason(id).await {
        Ok(reason) => reason,
        Err(e) => {
            sup.ctx.metrics.error(&e);
            tracing::warn!(build_id = %id, error = %e, "cannot read the cancel flag; the next renewal reads it again");
            None
        }
    }
}
