//! The report's picture, written by hand (no plotting dependency): the share of devices done,
//! and the origin's and the sites' WAN bytes, over simulated time.

use super::Report;
use std::fmt::Write;

const W: f64 = 720.0;
const H: f64 = 360.0;
const PAD: f64 = 48.0;

/// An SVG of `r`'s samples: three lines, each scaled to its own maximum (labelled).
pub fn completion(r: &Report) -> String {
    let t_max = r.samples.last().map_or(1.0, |s| s.0).max(1e-9);
    let size = r.size.max(1) as f64;
    let origin_max = r.samples.iter().map(|s| s.2).fold(0.0f64, f64::max).max(1.0);
    let wan_max = r.samples.iter().map(|s| s.3).fold(0.0f64, f64::max).max(1.0);
    let x = |t: f64| PAD + (W - 2.0 * PAD) * t / t_max;
    let y = |v: f64| H - PAD - (H - 2.0 * PAD) * v;
    let mut s = String::new();
    let _ = write!(
        s,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{H}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{PAD}\" y=\"20\">{} devices, {} sites: all done {:.1} s ({:.2} x the bound {:.1} s)</text>\n",
        r.devices,
        r.sites,
        r.all_done,
        r.ratio(),
        r.bound
    );
    let _ = writeln!(
        s,
        "<line x1=\"{PAD}\" y1=\"{0}\" x2=\"{1}\" y2=\"{0}\" stroke=\"black\"/><line x1=\"{PAD}\" y1=\"{PAD}\" x2=\"{PAD}\" y2=\"{0}\" stroke=\"black\"/>",
        H - PAD,
        W - PAD
    );
    for i in 0..=4 {
        let t = t_max * i as f64 / 4.0;
        let _ =
            writeln!(s, "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{t:.0} s</text>", x(t), H - PAD + 16.0);
    }
    let lines = [
        ("#1f77b4", "devices done (share)".to_string(), r.samples.iter().map(|s| (s.0, s.1)).collect::<Vec<_>>()),
        (
            "#d62728",
            format!("origin egress (max {:.2} x release)", origin_max / size),
            r.samples.iter().map(|s| (s.0, s.2 / origin_max)).collect(),
        ),
        (
            "#2ca02c",
            format!("all sites' WAN download (max {:.1} x release)", wan_max / size),
            r.samples.iter().map(|s| (s.0, s.3 / wan_max)).collect(),
        ),
    ];
    for (k, (colour, label, points)) in lines.iter().enumerate() {
        let mut path = String::new();
        for &(t, v) in points {
            let _ = write!(path, "{:.1},{:.1} ", x(t), y(v));
        }
        let _ = writeln!(
            s,
            "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{}\"/>",
            path.trim_end()
        );
        let ly = PAD + 16.0 * k as f64;
        let _ = writeln!(
            s,
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"12\" height=\"3\" fill=\"{colour}\"/>",
            PAD + 10.0,
            ly - 4.0
        );
        let _ = writeln!(s, "<text x=\"{:.1}\" y=\"{ly:.1}\">{label}</text>", PAD + 28.0);
    }
    s.push_str("</svg>\n");
    s
}
