//! orcs-database: being built (see the open issue).
