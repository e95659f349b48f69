//! Client side (placeholder replaced below).
