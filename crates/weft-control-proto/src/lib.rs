//! Weft control protocol, sans-IO: Noise IK handshake, authenticated frames, message codec
