//! Test harness for Weft end-to-end tests: network namespaces, veth links, processes, waits
