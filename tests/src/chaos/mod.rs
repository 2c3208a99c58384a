//! The chaos checker of issue 9: a seeded schedule of faults over real
//! `kiln worker` processes ([`run`], [`faults`]), the history of what was
//! done and seen ([`history`]) and a pure checker of Kiln's promises over it
//! ([`checker`]).

pub mod checker;
pub mod engines;
pub mod faults;
pub mod history;
pub mod run;
