/* Upscales a PAM image (P7, RGB_ALPHA or RGB, 8 bits) with the pgp-wgpu C ABI.
 *
 *   cc upscale.c -I../include -L<dir of libpgp_wgpu> -lpgp_wgpu -o upscale
 *   ./upscale BUNDLE IN.pam OUT.pam [-d DEVICE] [-p auto|f16|f32] [-s SCALE] [-n STEPS]
 *             [-t TILE] [--seed N] [--cancel-after N] [--format rgba8|bgra8|rgba16]
 *
 * Prints progress to stderr; --cancel-after N makes the progress callback ask to stop after N
 * units of work. --format picks the entry point: the pixels are handed over as BGRA8 (Krita)
 * or RGBA16 (GIMP, each 8-bit value v as v * 257) and the result written back as an 8-bit
 * RGBA PAM (RGBA16 with MAXVAL 65535). Exit status: 0 on success, otherwise the PgpStatus
 * value + 10.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pgp_wgpu.h"

typedef struct {
    uint32_t cancel_after; /* 0 = never */
    uint32_t calls;
} Progress;

static int32_t on_progress(void *user, uint32_t done, uint32_t total) {
    Progress *p = (Progress *)user;
    p->calls++;
    fprintf(stderr, "progress %u/%u\n", done, total);
    return p->cancel_after != 0 && done >= p->cancel_after;
}

/* Reads a P7 PAM with DEPTH 3 or 4 and MAXVAL 255 as RGBA8. */
static uint8_t *read_pam(const char *path, uint32_t *w, uint32_t *h) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char line[256];
    unsigned width = 0, height = 0, depth = 0, maxval = 0;
    if (!fgets(line, sizeof line, f) || strncmp(line, "P7", 2) != 0) goto fail;
    while (fgets(line, sizeof line, f) && strncmp(line, "ENDHDR", 6) != 0) {
        sscanf(line, "WIDTH %u", &width);
        sscanf(line, "HEIGHT %u", &height);
        sscanf(line, "DEPTH %u", &depth);
        sscanf(line, "MAXVAL %u", &maxval);
    }
    if (!width || !height || (depth != 3 && depth != 4) || maxval != 255) goto fail;
    uint8_t *rgba = malloc((size_t)width * height * 4);
    for (size_t i = 0; i < (size_t)width * height; i++) {
        uint8_t px[4] = {0, 0, 0, 255};
        if (fread(px, 1, depth, f) != depth) { free(rgba); goto fail; }
        memcpy(rgba + 4 * i, px, 4);
    }
    fclose(f);
    *w = width;
    *h = height;
    return rgba;
fail:
    fclose(f);
    return NULL;
}

/* Writes RGBA as a PAM: 8 bits (bytes_per_pixel 4) or 16 bits big-endian (8). */
static int write_pam(const char *path, const uint8_t *px, uint32_t w, uint32_t h,
                     uint32_t bytes_per_pixel) {
    FILE *f = fopen(path, "wb");
    if (!f) return 0;
    fprintf(f, "P7\nWIDTH %u\nHEIGHT %u\nDEPTH 4\nMAXVAL %u\nTUPLTYPE RGB_ALPHA\nENDHDR\n", w, h,
            bytes_per_pixel == 8 ? 65535u : 255u);
    size_t n = (size_t)w * h * bytes_per_pixel;
    int ok = 1;
    if (bytes_per_pixel == 8) {
        const uint16_t *v = (const uint16_t *)px;
        for (size_t i = 0; i < n / 2 && ok; i++) {
            uint8_t be[2] = {(uint8_t)(v[i] >> 8), (uint8_t)(v[i] & 0xff)};
            ok = fwrite(be, 1, 2, f) == 2;
        }
    } else {
        ok = fwrite(px, 1, n, f) == n;
    }
    return fclose(f) == 0 && ok;
}

/* Swaps R and B of n 4-byte pixels in place (RGBA8 <-> BGRA8). */
static void swap_rb(uint8_t *px, size_t n) {
    for (size_t i = 0; i < n; i++) {
        uint8_t t = px[4 * i];
        px[4 * i] = px[4 * i + 2];
        px[4 * i + 2] = t;
    }
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s BUNDLE IN.pam OUT.pam [-d DEVICE] [-p PRECISION] [-s SCALE] "
                        "[-n STEPS] [-t TILE] [--seed N] [--cancel-after N] [--format F]\n",
                argv[0]);
        return 2;
    }
    const char *device = "auto";
    const char *precision = "auto";
    PgpOptions options = pgp_options_default();
    Progress progress = {0, 0};
    const char *format = "rgba8";
    for (int i = 4; i + 1 < argc; i += 2) {
        const char *flag = argv[i], *value = argv[i + 1];
        if (!strcmp(flag, "-d")) device = value;
        else if (!strcmp(flag, "-p")) precision = value;
        else if (!strcmp(flag, "-s")) options.scale = (uint32_t)atoi(value);
        else if (!strcmp(flag, "-n")) options.steps = (uint32_t)atoi(value);
        else if (!strcmp(flag, "-t")) options.tile = (uint32_t)atoi(value);
        else if (!strcmp(flag, "--seed")) options.seed = strtoull(value, NULL, 10);
        else if (!strcmp(flag, "--cancel-after")) progress.cancel_after = (uint32_t)atoi(value);
        else if (!strcmp(flag, "--format")) format = value;
        else { fprintf(stderr, "unknown flag %s\n", flag); return 2; }
    }

    uint32_t w, h;
    uint8_t *rgba = read_pam(argv[2], &w, &h);
    if (!rgba) { fprintf(stderr, "%s: not an 8-bit RGB or RGBA PAM file\n", argv[2]); return 2; }

    PgpUpscaler *upscaler = NULL;
    PgpStatus s = pgp_upscaler_new_precision(argv[1], device, precision, &upscaler);
    if (s != PGP_OK) {
        fprintf(stderr, "pgp_upscaler_new_precision: %d: %s\n", (int)s, pgp_last_error());
        free(rgba);
        return 10 + (int)s;
    }
    PgpImage *out = NULL;
    size_t n = (size_t)w * h;
    if (!strcmp(format, "bgra8")) {
        swap_rb(rgba, n);
        s = pgp_upscale_bgra8(upscaler, rgba, w, h, 4 * w, &options, on_progress, &progress, &out);
    } else if (!strcmp(format, "rgba16")) {
        uint16_t *wide = malloc(n * 4 * sizeof(uint16_t));
        for (size_t i = 0; i < 4 * n; i++) wide[i] = (uint16_t)(rgba[i] * 257u);
        s = pgp_upscale_rgba16(upscaler, wide, w, h, 8 * w, &options, on_progress, &progress,
                               &out);
        free(wide);
    } else {
        s = pgp_upscale_rgba8(upscaler, rgba, w, h, 4 * w, &options, on_progress, &progress, &out);
    }
    free(rgba);
    if (s != PGP_OK) {
        fprintf(stderr, "pgp_upscale_%s: %d: %s (after %u progress calls)\n", format, (int)s,
                pgp_last_error(), progress.calls);
        pgp_upscaler_free(upscaler);
        return 10 + (int)s;
    }
    uint32_t bpp = pgp_image_bytes_per_pixel(out);
    const uint8_t *px = pgp_image_pixels(out);
    size_t out_n = (size_t)pgp_image_width(out) * pgp_image_height(out);
    uint8_t *rgba_out = NULL;
    if (!strcmp(format, "bgra8")) {
        rgba_out = malloc(out_n * 4);
        memcpy(rgba_out, px, out_n * 4);
        swap_rb(rgba_out, out_n);
        px = rgba_out;
    }
    if (!strcmp(format, "rgba8") && pgp_image_rgba8(out) != px) {
        fprintf(stderr, "pgp_image_rgba8 disagrees with pgp_image_pixels\n");
        return 2;
    }
    int ok = write_pam(argv[3], px, pgp_image_width(out), pgp_image_height(out), bpp);
    free(rgba_out);
    fprintf(stderr, "%ux%u -> %ux%u in %u units\n", w, h, pgp_image_width(out),
            pgp_image_height(out), progress.calls);
    pgp_image_free(out);
    pgp_upscaler_free(upscaler);
    return ok ? 0 : 2;
}
