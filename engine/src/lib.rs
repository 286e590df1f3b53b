//! wmr engine
