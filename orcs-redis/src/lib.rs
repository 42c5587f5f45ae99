//! orcs-redis: being built (see the open issue).
