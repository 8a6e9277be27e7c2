//! kaon core (pure).
