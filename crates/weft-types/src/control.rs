//! Netmaps and the control protocol messages (in progress).
