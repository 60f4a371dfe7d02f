/* Upscales a PAM image (P7, RGB_ALPHA or RGB, 8 bits) with the pgp-wgpu C ABI.
 *
 *   cc upscale.c -I../include -L<dir of libpgp_wgpu> -lpgp_wgpu -o upscale
 *   ./upscale BUNDLE IN.pam OUT.pam [-d DEVICE] [-s SCALE] [-n STEPS] [-t TILE] [--seed N]
 *             [--cancel-after N]
 *
 * Prints progress to stderr; --cancel-after N makes the progress callback ask to stop after N
 * units of work. Exit status: 0 on success, otherwise the PgpStatus value + 10.
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

static int write_pam(const char *path, const uint8_t *rgba, uint32_t w, uint32_t h) {
    FILE *f = fopen(path, "wb");
    if (!f) return 0;
    fprintf(f, "P7\nWIDTH %u\nHEIGHT %u\nDEPTH 4\nMAXVAL 255\nTUPLTYPE RGB_ALPHA\nENDHDR\n", w, h);
    size_t n = (size_t)w * h * 4;
    int ok = fwrite(rgba, 1, n, f) == n;
    return fclose(f) == 0 && ok;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s BUNDLE IN.pam OUT.pam [-d DEVICE] [-s SCALE] [-n STEPS] "
                        "[-t TILE] [--seed N] [--cancel-after N]\n", argv[0]);
        return 2;
    }
    const char *device = "auto";
    PgpOptions options = pgp_options_default();
    Progress progress = {0, 0};
    for (int i = 4; i + 1 < argc; i += 2) {
        const char *flag = argv[i], *value = argv[i + 1];
        if (!strcmp(flag, "-d")) device = value;
        else if (!strcmp(flag, "-s")) options.scale = (uint32_t)atoi(value);
        else if (!strcmp(flag, "-n")) options.steps = (uint32_t)atoi(value);
        else if (!strcmp(flag, "-t")) options.tile = (uint32_t)atoi(value);
        else if (!strcmp(flag, "--seed")) options.seed = strtoull(value, NULL, 10);
        else if (!strcmp(flag, "--cancel-after")) progress.cancel_after = (uint32_t)atoi(value);
        else { fprintf(stderr, "unknown flag %s\n", flag); return 2; }
    }

    uint32_t w, h;
    uint8_t *rgba = read_pam(argv[2], &w, &h);
    if (!rgba) { fprintf(stderr, "%s: not an 8-bit RGB or RGBA PAM file\n", argv[2]); return 2; }

    PgpUpscaler *upscaler = NULL;
    PgpStatus s = pgp_upscaler_new(argv[1], device, &upscaler);
    if (s != PGP_OK) {
        fprintf(stderr, "pgp_upscaler_new: %d: %s\n", (int)s, pgp_last_error());
        free(rgba);
        return 10 + (int)s;
    }
    PgpImage *out = NULL;
    s = pgp_upscale_rgba8(upscaler, rgba, w, h, 4 * w, &options, on_progress, &progress, &out);
    free(rgba);
    if (s != PGP_OK) {
        fprintf(stderr, "pgp_upscale_rgba8: %d: %s (after %u progress calls)\n", (int)s,
                pgp_last_error(), progress.calls);
        pgp_upscaler_free(upscaler);
        return 10 + (int)s;
    }
    int ok = write_pam(argv[3], pgp_image_rgba8(out), pgp_image_width(out), pgp_image_height(out));
    fprintf(stderr, "%ux%u -> %ux%u in %u units\n", w, h, pgp_image_width(out),
            pgp_image_height(out), progress.calls);
    pgp_image_free(out);
    pgp_upscaler_free(upscaler);
    return ok ? 0 : 2;
}
