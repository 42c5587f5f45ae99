//! orcs-cli: being built (see the open issue).
