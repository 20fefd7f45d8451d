//! Unit tests of the framework model (see below).
