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
                    && let Ok(Some(reason)) = sup.ctx.store.cancel_reason(&id).await
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
