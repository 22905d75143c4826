"""The tables behind the size choice (autosize.py): each size's validation loss after N steps, measured once by
benchmarks/size_sweep.py on the calibration corpora (benchmarks/README.md says how, HISTORY.md each run), and where
more steps stopped helping. Data only: autosize.py reads them (and tests replace them there)."""

# training-split characters -> (layers, hidden) -> [(steps, best validation nats/char)]: tiny-shakespeare (its
# first 100,000 characters, and all of it), first 90 % / last 10 %, tanh, B32 T128, the defaults otherwise,
# --precision fp32, seed 1, no moving average (benchmarks/size_sweep.py; benchmarks/README.md; 3x256: 2026-12-04,
# --ema 0 from 500 steps, the default --ema below, where the average changes nothing yet: 1.6812 either way; 3x384:
# 2026-12-07, --optimizer adamw --ema 0, evaluated every 2 passes on 90,000 characters, the default since 7254093)
SWEEPS: dict = {
    90_000: {
        (2, 128): [(125, 2.1471), (250, 1.8551), (500, 1.7050), (1000, 1.6496), (2000, 1.6340)],
        (2, 256): [(125, 1.9059), (250, 1.6857), (500, 1.5911), (1000, 1.6030), (2000, 1.6147)],
        (2, 512): [(125, 1.7298), (250, 1.5725), (500, 1.6049), (1000, 1.6359)],
        (3, 256): [(125, 1.8616), (250, 1.6368), (500, 1.5430), (1000, 1.5552), (2000, 1.5718)],
        (3, 384): [(125, 1.7385), (250, 1.5591), (500, 1.5365), (1000, 1.5651), (2000, 1.5711)],
    },
    1_003_854: {
        (2, 128): [(125, 2.2947), (250, 2.0381), (500, 1.8726), (1000, 1.7618), (2000, 1.6891), (4000, 1.6573)],
        (2, 256): [(125, 2.0995), (250, 1.8855), (500, 1.7269), (1000, 1.6202), (2000, 1.5583), (4000, 1.5346)],
        (2, 512): [(125, 1.9591), (250, 1.7662), (500, 1.6161), (1000, 1.5407), (2000, 1.5089), (4000, 1.4922)],
        (3, 256): [(125, 2.0621), (250, 1.8461), (500, 1.6812), (1000, 1.5752), (2000, 1.5210), (4000, 1.5009)],
        (3, 384): [(125, 1.9705), (250, 1.7700), (500, 1.6149), (1000, 1.5274), (2000, 1.4921), (4000, 1.4756)],
    },
}

# past the largest corpus in SWEEPS, each size gains what it gained on a corpus with more text to give: the Python
# source of the installed packages (benchmarks/code_corpus.py), its first 1.1 MB and 100 MB (training splits of
# 1,003,854 and 90,000,000 characters), the same settings. Its validation splits differ, and so does their difficulty:
# each size's difference at the first step count (where neither run has repeated its text) is taken out, and no gain
# is assumed below it. 3x256 and 3x384 were not measured there: they gain as the sizes around them (_larger_gain).
LARGER: dict = {
    1_003_854: {
        (2, 128): [(250, 2.3622), (1000, 2.0007), (4000, 1.8836)],
        (2, 256): [(250, 2.1703), (1000, 1.8380), (4000, 1.7937)],
        (2, 512): [(250, 1.9882), (1000, 1.7782), (4000, 1.7916)],
    },
    90_000_000: {
        (2, 128): [(250, 2.2957), (1000, 1.9052), (4000, 1.6860)],
        (2, 256): [(250, 2.1292), (1000, 1.7522), (4000, 1.5694)],
        (2, 512): [(250, 1.9711), (1000, 1.6718), (4000, 1.5480)],
    },
}

# where more steps stopped lowering validation loss: training-split characters -> (layers, hidden) -> the step count
# with the lowest loss, where a longer run of that size did worse. 90,000: from SWEEPS; 1,003,854, 2x512: runs of
# 4,000, 6,000 and 8,000 steps with the default average, 1.4790, 1.4753, 1.4829 (benchmarks/README.md). A size not
# listed for a corpus was not measured there (the sweep had not run it long enough to see it stop gaining): the
# budget or the user's step count ends such a run, never a limit of ours.
BEST_STEPS: dict = {
    90_000: {(2, 256): 500, (2, 512): 250, (3, 256): 500, (3, 384): 500},
    1_003_854: {(2, 512): 6000},
}
SWEEP_CHARS_PER_STEP = 32 * 128  # the sweeps' batch x sequence length

# Muon (--optimizer muon, the default for tanh): each size's loss after N steps on tiny-shakespeare's training split of
# MUON_SWEEP_CHARS, the settings above but the default --ema 0.995, the mean of seeds 1-3 (benchmarks/size_sweep.py
# --optimizer muon; benchmarks/README.md; 3x384 at 4,000 steps: seeds 1-2). Muon's gain over AdamW (this minus SWEEPS'
# same corpus at the same steps) is largest where steps are few and grows with the size; measured on this corpus only,
# it is taken to hold on corpora of every length (added to AdamW's prediction there), and where the two stop gaining
# (BEST_STEPS) is AdamW's.
MUON_SWEEP_CHARS = 1_003_854
MUON_SWEEPS: dict = {
    (2, 128): [(250, 2.0509), (500, 1.8282), (1000, 1.6990), (2000, 1.6436), (4000, 1.6233)],
    (2, 256): [(250, 1.8669), (500, 1.6535), (1000, 1.5525), (2000, 1.5173), (4000, 1.5089)],
    (2, 512): [(250, 1.7127), (500, 1.5407), (1000, 1.4812), (2000, 1.4710), (4000, 1.4791)],
    (3, 256): [(250, 1.7876), (500, 1.5789), (1000, 1.5003), (2000, 1.4804), (4000, 1.4847)],
    (3, 384): [(250, 1.6951), (500, 1.5214), (1000, 1.4670), (2000, 1.4625), (4000, 1.4871)],
}

# Muon on a corpus whose validation text is unlike its training text (shift.py): the Python calibration corpus
# (benchmarks/calibration_corpora.py --kinds python, 1 MB: 900,000 training characters), the settings of MUON_SWEEPS
# (size_sweep.py --optimizer muon, seed 1; benchmarks/README.md; 3x384 to 2,000 steps only). Each size's change from its
# first step count, less the change MUON_SWEEPS saw, is added to the prediction in the measure of the run's own corpus
# (shift_weight): there the larger sizes stop gaining sooner (2x512's 4,000-step run ended at 2.70).
SHIFTED_SWEEP_CHARS = 900_000
SHIFTED_SWEEPS: dict = {
    (2, 128): [(250, 2.3667), (500, 2.1287), (1000, 2.0085), (2000, 1.9477), (4000, 1.9276)],
    (2, 256): [(250, 2.1806), (500, 1.9524), (1000, 1.8884), (2000, 1.8782), (4000, 1.8508)],
    (2, 512): [(250, 2.0030), (500, 1.8374), (1000, 1.8289), (2000, 1.8485), (4000, 1.9306)],
    (3, 256): [(250, 2.1043), (500, 1.8738), (1000, 1.8361), (2000, 1.8211), (4000, 1.8007)],
    (3, 384): [(250, 1.9933), (500, 1.8166), (1000, 1.7895), (2000, 1.8020)],
}
# Muon on short corpora: each size's loss after N steps on a training split of this many characters, the mean over four
# corpora (the first 111,112 and 33,334 characters of the C, French, Python and English calibration corpora, 90/10),
# seeds 1-3 each, the settings of MUON_SWEEPS (size_sweep.py --optimizer muon; benchmarks/HISTORY.md, "Muon's short
# sweep on four corpora", "A short table at 30,000 characters", "100,000 characters again" and "3x384 in every table").
# 100,000: evaluated every 200 steps, but 2x512 at 250, 3x256 at 500 and 1,000 steps (the points the 60 s pick turns on)
# and 3x384 every 2 passes, the default since 7254093, as at 30,000 (3x384's 1,000: seeds 1-2). Below MUON_SWEEP_CHARS,
# Muon's gain moves toward what these tables gain over AdamW's SWEEPS at their lengths (muon_gain).
MUON_SHORT_CHARS = 100_000
MUON_SHORT: dict = {
    30_000: {
        (2, 128): [(250, 1.8504), (500, 1.6618), (1000, 1.6372)],
        (2, 256): [(125, 2.0025), (250, 1.6149), (500, 1.5719)],
        (2, 512): [(125, 1.7081), (250, 1.5219), (500, 1.5229)],
        (3, 256): [(125, 1.9419), (250, 1.5845), (500, 1.5586)],
        (3, 384): [(125, 1.7428), (250, 1.5313), (500, 1.5316)],
    },
    MUON_SHORT_CHARS: {
        (2, 128): [(250, 1.8779), (500, 1.6590), (1000, 1.6356)],
        (2, 256): [(250, 1.6152), (500, 1.5569), (1000, 1.5651)],
        (2, 512): [(250, 1.4957), (500, 1.5154)],
        (3, 256): [(250, 1.5412), (500, 1.5007), (1000, 1.4979), (2000, 1.4964), (4000, 1.4843)],
        (3, 384): [(250, 1.4789), (500, 1.4751), (1000, 1.4846)],
    },
}
# where more Muon steps stopped lowering validation loss in MUON_SHORT (as BEST_STEPS), at each of its lengths: for the
# sizes listed, in place of AdamW's. None: still gaining (on the mean) at its longest run, so no limit on corpora this
# long, up to a longer one that lists a count (AdamW's below the shortest: 3x256 gained to 4,000 steps at 100,000,
# where AdamW's ~556 lost up to 0.07). At 30,000 2x512 stopped (250: 1.5219, 500: 1.5229) and 3x384 (1.5313, 1.5316):
# the others stopped by 250 on C, French and English but gained more on Python, whose validation text repeats its
# training text. 3x384 at 100,000: 1,000 steps lost 0.01 on 500 (1.4846 on seeds 1-2 against 1.4751).
MUON_BEST_STEPS: dict = {
    30_000: {(2, 128): None, (2, 256): None, (2, 512): 250, (3, 256): None, (3, 384): 250},
    MUON_SHORT_CHARS: {(2, 256): 500, (2, 512): 250, (3, 256): None, (3, 384): 500},
}

# shift.validation_shift where SHIFTED_SWEEPS starts to count and where in full: the largest measured where Muon's
# table's pick still won at 300 s (English: 0.475, 2x512 by 0.017), and the Python corpus's (1.167)
SHIFT_RAMP = (0.475, 1.167)
