#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| pgp_fuzz::tokenizer(data));
