from crammer.units import time_unit


def test_a_time_axis_takes_the_unit_that_fits_its_span():
    assert time_unit(0.5) == (1.0, "seconds")
    assert time_unit(120) == (1.0, "seconds")  # a 2-minute run: 0..120 s, not 0.000..0.035 h
    assert time_unit(121) == (60.0, "minutes")
    assert time_unit(7200) == (60.0, "minutes")
    assert time_unit(24 * 3600) == (3600.0, "hours")
