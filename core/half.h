/*  half: 16-bit float decoding (IEEE binary16 and bfloat16) to float32.

    Conversions are exact (every f16 and bf16 value is a float32 value),
    vectorised with F16C/AVX2 where the CPU has them (checked at run time),
    and read their input through unaligned loads: tensors arrive at any
    offset inside a msgpack message.  */
#ifndef XPL_HALF_H
#define XPL_HALF_H

#include <stddef.h>
#include <stdint.h>

/* Decode one binary16 value. */
float half_f16_to_f32(uint16_t h);

/* Decode one bfloat16 value. */
float half_bf16_to_f32(uint16_t h);

/* Round a float32 to the nearest binary16 (ties to even); for encoders. */
uint16_t half_f32_to_f16(float f);

/* Round a float32 to the nearest bfloat16 (ties to even); for encoders. */
uint16_t half_f32_to_bf16(float f);

/* Decode `n` little-endian values at `src` (any alignment) into `dst`. */
void half_f16_decode(float *dst, const void *src, size_t n);
void half_bf16_decode(float *dst, const void *src, size_t n);

/* Encode `n` floats into little-endian 16-bit values at `dst`. */
void half_f16_encode(void *dst, const float *src, size_t n);
void half_bf16_encode(void *dst, const float *src, size_t n);

#endif
