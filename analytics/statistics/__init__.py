"""Pure statistics (numpy and scipy.stats), with no Django in them: easy to test on fixed data."""
