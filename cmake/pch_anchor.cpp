// Anchor translation unit for the shared precompiled header target (rp_pch).
namespace rankprune { int pch_anchor() { return 0; } }
