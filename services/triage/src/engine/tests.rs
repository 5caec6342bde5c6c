use super::*;

/// The rules alone: these tests are about the rulebook's logic. The
/// learned model on top is tested in `model_*` below.
fn engine() -> Engine {
    Engine::builtin_rules().expect("builtin rulebook compiles")
}

fn with_model() -> Engine {
    Engine::builtin().expect("builtin rulebook and model load")
}

#[track_caller]
fn assert_levels(e: &Engine, cases: &[(&str, RiskLevel)]) {
    let mut failures = Vec::new();
    for (text, want) in cases {
        let a = e.assess(text);
        if a.level != *want {
            let rules: Vec<_> = a
                .reasons
                .iter()
                .map(|r| format!("{}={}", r.rule, r.level))
                .collect();
            failures.push(format!("{text:?}: want {want}, got {} {rules:?}", a.level));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

use RiskLevel::{High, Imminent, Low, Moderate};

#[test]
fn builtin_rulebook_loads_with_a_version() {
    let e = engine();
    assert!(!e.version().is_empty());
    assert!(e.rule_count() > 20);
    assert_eq!(e.assess("hi").rulebook_version, e.version());
}

#[test]
fn imminent_phrases_en() {
    assert_levels(
        &engine(),
        &[
            (
                "my brother took a bunch of pills and he won't wake up",
                Imminent,
            ),
            ("she's not breathing and her lips are blue", Imminent),
            ("I took all my pills", Imminent),
            ("i just swallowed the whole bottle", Imminent),
            (
                "I have the pills in front of me and I'm going to kill myself tonight",
                Imminent,
            ),
            ("I'm standing on the bridge", Imminent),
            ("i think im overdosing", Imminent),
            ("this is goodbye", Imminent),
        ],
    );
}

#[test]
fn imminent_phrases_es() {
    assert_levels(
        &engine(),
        &[
            ("mi hermano no despierta", Imminent),
            ("me tomé todas las pastillas", Imminent),
            ("no respira y tiene los labios morados", Imminent),
            ("me voy a matar esta noche", Imminent),
            ("esta es mi despedida", Imminent),
        ],
    );
}

#[test]
fn high_phrases_en() {
    assert_levels(
        &engine(),
        &[
            ("I'm going to kill myself", High),
            ("i have a plan to end it", High),
            ("I tried to kill myself last week", High),
            ("just got out of rehab and used again", High),
            ("first time using since I got out of prison", High),
            ("i've been cutting myself", High),
            ("I wrote a suicide note", High),
        ],
    );
}

#[test]
fn high_phrases_es() {
    assert_levels(
        &engine(),
        &[
            ("me voy a matar", High),
            ("tengo un plan para matarme", High),
            ("intenté suicidarme la semana pasada", High),
            ("salí del anexo y volví a consumir", High),
        ],
    );
}

#[test]
fn moderate_phrases() {
    assert_levels(
        &engine(),
        &[
            ("I want to die", Moderate),
            ("I relapsed", Moderate),
            ("dope sick and cant stop shaking", Moderate),
            ("I feel so hopeless", Moderate),
            ("me quiero morir", Moderate),
            ("ya no aguanto", Moderate),
            ("recaí otra vez", Moderate),
        ],
    );
}

/// Labelling policy 2026-12: unscreened active ideation is high unless the
/// message says there is no plan; passive wishes stay moderate; negations
/// and idioms stay low.
#[test]
fn unscreened_active_ideation_is_high_unless_no_plan_is_said() {
    assert_levels(
        &engine(),
        &[
            ("kms", High),
            ("sometimes i think about suicide", High),
            ("I want to end my life", High),
            ("quiero quitarme la vida", High),
            ("tengo pensamientos suicidas", High),
            ("I want to end my life but I have no plan", Moderate),
            (
                "I want to kill myself. I'm not gonna, I just want to",
                Moderate,
            ),
            ("quiero matarme pero no tengo ningún plan", Moderate),
            ("I wish I wouldn't wake up", Moderate),
            ("me quiero morir", Moderate),
            ("I'm not going to kill myself", Low),
            ("my son says he wants to kill himself", Moderate),
        ],
    );
}

/// A bare reach-out is moderate, a bare emergency signal imminent; the
/// same words inside a message with other content are not.
#[test]
fn bare_reach_outs_and_emergency_signals() {
    assert_levels(
        &engine(),
        &[
            ("help", Moderate),
            ("is anyone there? i need to talk", Moderate),
            ("can someone call me back", Moderate),
            ("¿hay alguien ahí?", Moderate),
            ("sos", Imminent),
            ("call an ambulance", Imminent),
            ("llamen a una ambulancia", Imminent),
            ("hi", Low),
            ("¿me pueden llamar mañana?", Low),
            ("No pienso matarme, solo quiero hablar con alguien", Low),
            (
                "if my friend ODs at a party do i call 911 first or narcan first",
                Low,
            ),
            (
                "can you help me find a detox bed near the clinic on main street",
                Low,
            ),
            // Inside a message already at high, the signal still counts.
            ("sos tengo un plan", Imminent),
        ],
    );
}

/// The web chat's pre-chat answer "not safe right now" goes to triage in
/// front of the first message (rulebook 2026.12.8, issue 15).
#[test]
fn not_safe_right_now_is_high_whatever_the_message() {
    let no = nwd_proto::events::SafeNow::No.as_words();
    let yes = nwd_proto::events::SafeNow::Yes.as_words();
    assert_levels(
        &engine(),
        &[
            (
                &format!("{no}\nhi, can I ask something about my meds schedule"),
                High,
            ),
            ("i dont feel safe at home tonight", High),
            ("no me siento segura en casa esta noche", High),
            (
                &format!("{yes}\nhi, can I ask something about my meds schedule"),
                Low,
            ),
            // Only the person about themselves.
            ("is the shelter safe right now", Low),
        ],
    );
}

/// Injury in progress, plans and preparations in other words, obfuscated
/// writing (categories of rulebook 2026.12.7).
#[test]
fn injury_plans_and_obfuscation_in_other_words() {
    assert_levels(
        &engine(),
        &[
            ("i cut too deep and it wont stop bleeding", Imminent),
            ("no para de sangrar, me corté muy hondo", Imminent),
            ("im bleeding and alone and i dont know what to do", Imminent),
            ("i know how i would do it", High),
            ("the belt is tied to the closet rod", Imminent),
            ("ya amarré la soga en la viga", Imminent),
            ("i want the batch thats been killing people", High),
            ("i w4nt t0 k1ll mys3lf", High),
            ("s u i c i d e is all i think about", High),
            ("k.i.l.l m.y.s.e.l.f", High),
            ("💊💊 its time", Imminent),
            // Hard negatives.
            ("i scratch my arm when im nervous", Low),
            ("see you at 3am for the b12 shot, covid19 test at 10am", Low),
        ],
    );
}

#[test]
fn low_phrases() {
    assert_levels(
        &engine(),
        &[
            ("what are your hours?", Low),
            ("where can I get narcan", Low),
            ("just checking in, doing better today", Low),
            ("gracias por todo", Low),
            ("¿a qué hora abren?", Low),
            ("", Low),
        ],
    );
}

#[test]
fn negation_lowers() {
    assert_levels(
        &engine(),
        &[
            ("I'm not going to kill myself", Low),
            ("I would never hurt myself", Low),
            ("I don't want to die", Low),
            ("no quiero morir", Low),
            ("no me voy a matar", Low),
            ("I'm not suicidal", Low),
            // Negation in one clause does not reach the next.
            ("I'm not okay, I want to die", Moderate),
            ("no i want to die", Moderate),
        ],
    );
}

#[test]
fn third_person_keeps_overdose_imminent() {
    assert_levels(
        &engine(),
        &[
            ("my brother took too many pills", Imminent),
            ("my friend is unresponsive", Imminent),
            ("my friend is going to kill himself", High),
            ("my sister feels hopeless", Low),
        ],
    );
}

#[test]
fn past_lowers() {
    assert_levels(
        &engine(),
        &[
            ("I used to cut myself when I was a teenager", Low),
            ("I tried to kill myself years ago", Moderate),
            ("I used to cut and now I started cutting myself again", High),
        ],
    );
}

#[test]
fn idioms_are_not_risk() {
    assert_levels(
        &engine(),
        &[
            ("this homework is killing me", Low),
            ("I'm dying to see you", Low),
            ("me muero de risa", Low),
            ("my mom is going to kill me lol", Low),
            ("lol im dead 💀", Low),
            ("my phone is dying", Low),
        ],
    );
}

#[test]
fn reasons_carry_character_spans_into_the_original() {
    let e = engine();
    let text = "Él tomó… no, MI HERMANO no despierta";
    let a = e.assess(text);
    assert_eq!(a.level, Imminent);
    let r = a
        .reasons
        .iter()
        .find(|r| r.rule == "overdose.unresponsive")
        .expect("unresponsive reason");
    let chars: Vec<char> = text.chars().collect();
    let span: String = chars[r.start..r.end].iter().collect();
    assert_eq!(span, "no despierta");
    assert_eq!(a.lang, Language::Es);
    assert!(!r.label.is_empty());
}

#[test]
fn emoji_span_points_at_the_emoji() {
    let e = engine();
    let text = "💊💊💊💀";
    let a = e.assess(text);
    assert!(a.level >= High, "{a:?}");
    assert!(a.reasons.iter().all(|r| r.end <= text.chars().count()));
}

#[test]
fn language_is_detected() {
    let e = engine();
    assert_eq!(e.assess("I want to talk to someone").lang, Language::En);
    assert_eq!(e.assess("quiero hablar con alguien").lang, Language::Es);
    assert_eq!(e.assess("hola").lang, Language::Es);
    assert_eq!(e.assess("").lang, Language::En);
}

#[test]
fn score_orders_within_level_and_stays_in_range() {
    let e = engine();
    for text in [
        "",
        "hi",
        "I want to die",
        "I took all my pills, he won't wake up",
    ] {
        let a = e.assess(text);
        assert!((0.0..=1.0).contains(&a.score), "{text}: {}", a.score);
    }
    let one = e.assess("he won't wake up").score;
    let more = e
        .assess("he won't wake up, his lips are blue and he's not breathing")
        .score;
    assert!(more > one);
    assert!(e.assess("I want to die").score > e.assess("what are your hours").score);
}

#[test]
fn odd_strings_do_not_panic() {
    let e = engine();
    let long = "a".repeat(1600);
    let mixed = "😀".repeat(400);
    for text in [
        "",
        " ",
        "\u{0}\u{1}\u{7f}",
        "\u{202E}مرحبا بالعالم\u{202C}",
        "e\u{301}\u{301}\u{301}\u{301}",
        "\u{301}leading mark",
        &long,
        &mixed,
        "ﬁ ß Ω ǅ İ",
        "\r\n\r\n",
        "'''' ’’’",
    ] {
        let a = e.assess(text);
        for r in &a.reasons {
            assert!(r.start <= r.end && r.end <= text.chars().count());
        }
    }
}

// ------------------------------------------------------------ rulebook errors

const GOOD: &str = r#"
version = "t1"

[[rule]]
id = "a.one"
label = "One"
level = "high"
patterns = ['one']
"#;

#[test]
fn a_minimal_rulebook_works() {
    let e = Engine::from_rulebook_str(GOOD, "good.toml").unwrap();
    assert_eq!(e.version(), "t1");
    assert_eq!(e.assess("only ONE").level, High);
    assert_eq!(e.assess("none").level, Low);
}

#[track_caller]
fn rule_error(text: &str) -> String {
    let err = Engine::from_rulebook_str(text, "rules/bad.toml").unwrap_err();
    err.to_string()
}

#[test]
fn unknown_level_names_file_line_and_rule() {
    let text = format!(
        "{GOOD}\n[[rule]]\nid = \"b.two\"\nlabel = \"Two\"\nlevel = \"severe\"\npatterns = ['two']\n"
    );
    let line = text.lines().position(|l| l.contains("severe")).unwrap() + 1;
    let msg = rule_error(&text);
    assert!(msg.contains("rules/bad.toml"), "{msg}");
    assert!(msg.contains(&format!(":{line}:")), "{msg}");
    assert!(msg.contains("b.two"), "{msg}");
    assert!(msg.contains("severe"), "{msg}");
}

#[test]
fn bad_pattern_names_file_line_and_rule() {
    let text = format!(
        "{GOOD}\n[[rule]]\nid = \"b.bad\"\nlabel = \"Bad\"\nlevel = \"low\"\npatterns = [\n  'fine',\n  '(unclosed',\n]\n"
    );
    let line = text.lines().position(|l| l.contains("(unclosed")).unwrap() + 1;
    let msg = rule_error(&text);
    assert!(msg.contains(&format!("rules/bad.toml:{line}:")), "{msg}");
    assert!(msg.contains("b.bad"), "{msg}");
}

#[test]
fn duplicate_id_names_both_lines() {
    let text = format!(
        "{GOOD}\n[[rule]]\nid = \"a.one\"\nlabel = \"Again\"\nlevel = \"low\"\npatterns = ['x']\n"
    );
    let line = text
        .lines()
        .collect::<Vec<_>>()
        .iter()
        .rposition(|l| l.contains("a.one"))
        .unwrap()
        + 1;
    let msg = rule_error(&text);
    assert!(msg.contains(&format!("rules/bad.toml:{line}:")), "{msg}");
    assert!(msg.contains("a.one") && msg.contains("duplicate"), "{msg}");
    assert!(msg.contains("line 5"), "{msg}");
}

#[test]
fn empty_label_is_an_error() {
    let text = format!(
        "{GOOD}\n[[rule]]\nid = \"b.empty\"\nlabel = \"  \"\nlevel = \"low\"\npatterns = ['x']\n"
    );
    let msg = rule_error(&text);
    assert!(
        msg.contains("b.empty") && msg.contains("empty label"),
        "{msg}"
    );
}

#[test]
fn non_toml_and_missing_fields_are_errors_with_a_line() {
    let msg = rule_error(
        "version = \"x\"\n[[rule]]\nid = \"r\"\nlabel = \"L\"\nlevel = \"low\"\npatterns = ['x'\n",
    );
    assert!(msg.starts_with("rules/bad.toml:"), "{msg}");
    let msg =
        rule_error("version = \"x\"\n\n[[rule]]\nid = \"r\"\nlevel = \"low\"\npatterns = ['x']\n");
    assert!(
        msg.contains("rules/bad.toml:3:") && msg.contains("label"),
        "{msg}"
    );
    let msg = rule_error("version = \"x\"\n");
    assert!(msg.contains("no rules"), "{msg}");
}

#[test]
fn combo_with_unknown_tag_is_an_error() {
    let text = format!(
        "{GOOD}\n[[combo]]\nid = \"c.x\"\nlabel = \"X\"\nlevel = \"high\"\nall = [\"nope\"]\n"
    );
    let msg = rule_error(&text);
    assert!(msg.contains("c.x") && msg.contains("nope"), "{msg}");
}

#[test]
fn load_reports_a_missing_file() {
    let err = Engine::load("/nonexistent/rulebook.toml").unwrap_err();
    assert!(err.to_string().contains("/nonexistent/rulebook.toml"));
}

#[test]
fn fragments_expand_and_unknown_fragments_are_errors() {
    let text = r#"
version = "f1"
[define]
FRUIT = '(apple|pear)s?'
BOWL = 'bowl of {FRUIT}'

[[rule]]
id = "f.bowl"
label = "Bowl"
level = "moderate"
patterns = ['a {BOWL}']
"#;
    let e = Engine::from_rulebook_str(text, "f.toml").unwrap();
    assert_eq!(e.assess("a bowl of pears").level, Moderate);
    assert_eq!(e.assess("a bowl of plums").level, Low);

    let bad = text.replace("a {BOWL}", "a {PLUM}");
    let msg = rule_error(&bad);
    let line = bad.lines().position(|l| l.contains("{PLUM}")).unwrap() + 1;
    assert!(msg.contains(&format!("rules/bad.toml:{line}:")), "{msg}");
    assert!(msg.contains("f.bowl") && msg.contains("PLUM"), "{msg}");

    let looping = text.replace("'bowl of {FRUIT}'", "'bowl of {BOWL}'");
    assert!(rule_error(&looping).contains("nest"));
    let lower = text.replace("[define]\n", "[define]\nfruit = 'x'\n");
    assert!(rule_error(&lower).contains("define.fruit"));
}

#[test]
fn combinations_need_their_matches_close_together() {
    let e = engine();
    assert_eq!(e.assess("I'm going to kill myself tonight").level, Imminent);
    let far = format!(
        "I'm going to kill myself. {} I'll see you tonight at group.",
        "I have been thinking about a lot of things this week and talking with my sister about school and work and the weather. ".repeat(4)
    );
    assert_eq!(e.assess(&far).level, High);
}

// ---------------------------------------------- categories added in rulebook 2025.11.7

/// Loss of tolerance after any release or stretch clean (county, juvie, halfway house,
/// psych ward, months clean); look-alikes without use stay low.
#[test]
fn using_after_any_release_is_loss_of_tolerance() {
    assert_levels(
        &engine(),
        &[
            ("first time shooting up since my 8 months in county", High),
            ("did my first bag since i left the halfway house", High),
            ("got out of juvie friday and already got high", High),
            ("first time using in about 6 months", High),
            (
                "i was in the psych ward for 2 weeks and used the same night",
                High,
            ),
            ("primera vez que me meto desde que salí del penal", High),
            (
                "my cousin got out of prison yesterday and is shooting up",
                High,
            ),
            ("first time in county and i'm scared", Low),
            ("first time seeing my mom since i got out of jail", Low),
            ("9 months clean today", Low),
            ("got out of rehab a year ago and haven't used since", Low),
        ],
    );
}

/// Self-harm acts in other words (carving, burning, scratching to bleeding, hitting
/// oneself); someone else's is moderate; accidents and the past are low.
#[test]
fn self_harm_acts_without_the_usual_words() {
    assert_levels(
        &engine(),
        &[
            ("i carved a word into my forearm last night", High),
            ("burned my wrist with a lighter on purpose", High),
            ("scratching my thighs until they bleed", High),
            ("i keep punching myself in the head", High),
            ("me quemé la pierna con el encendedor", High),
            ("my brother keeps carving into his arms", Moderate),
            ("carving a turkey for thanksgiving", Low),
            ("burned myself making breakfast lol", Low),
            ("the cat scratched me on my arm", Low),
            (
                "i used to scratch my arms until they bled when i was a teen",
                Low,
            ),
        ],
    );
}

/// A lethal means within reach plus dwelling on it or turning it on oneself; harmless
/// or denied mentions stay low.
#[test]
fn means_and_thoughts_of_using_it() {
    assert_levels(
        &engine(),
        &[
            (
                "there's a shotgun in the hall closet and i can't stop thinking about it",
                High,
            ),
            (
                "i keep thinking about turning my dad's pistol on myself",
                High,
            ),
            ("i keep thinking about the razor blades in my drawer", High),
            ("no dejo de pensar en la soga del garaje", High),
            ("i'd never turn a gun on myself", Low),
            ("my uncle has a rifle for deer season", Low),
            ("i keep thinking about the new knives i want", Low),
        ],
    );
}

/// Burdensomeness is passive ideation; "fine without me" about an event, or "if i"
/// without absence, is not.
#[test]
fn perceived_burdensomeness() {
    assert_levels(
        &engine(),
        &[
            ("everyone would be better off if i was gone", Moderate),
            ("my kids would be happier without me around", Moderate),
            ("i'm nothing but a burden to everyone", Moderate),
            ("todos estarían más tranquilos sin mí", Moderate),
            (
                "my dad thinks everyone would be better off without him",
                Moderate,
            ),
            ("the party will be fine without me", Low),
            ("they'll be okay without me tonight", Low),
            ("it would be easier if i had a ride", Low),
            ("my family wouldn't be better off without me", Low),
            (
                "i used to think my family would be better off without me",
                Low,
            ),
        ],
    );
}

/// Spanish distress with intensifiers and slang; enduring heat or hunger "jaja" is
/// hyperbole, but enduring pain is distress.
#[test]
fn spanish_intensifiers_and_hyperbole() {
    assert_levels(
        &engine(),
        &[
            ("estoy bien pinche desesperada", Moderate),
            ("ando re mal, ya no doy más", Moderate),
            ("me siento de la chingada", Moderate),
            ("ya no aguanto el calor de este cuarto jaja", Low),
            ("no aguanto el hambre jaja", Low),
            ("estoy desesperado por que llegue la quincena", Low),
            ("estuvo bien pinche chido", Low),
            ("ya no aguanto este dolor", Moderate),
        ],
    );
}

/// Hearing voices is distress; voices telling them to harm themselves are high.
#[test]
fn voices_and_command_hallucinations() {
    assert_levels(
        &engine(),
        &[
            ("the voices won't leave me alone", Moderate),
            ("i keep hearing voices at night", Moderate),
            ("the voices keep telling me to hurt myself", High),
            ("a voice in my head says i should die", High),
            ("las voces me dicen que me mate", High),
            ("i lost my voice at the concert", Low),
            ("i don't hear voices, i'm just sad", Low),
            ("my aunt hears voices but she's on meds and doing well", Low),
        ],
    );
}

/// Overdose words: only an overdose happening now is imminent; a recent one is high,
/// a thought moderate, a distant one low.
#[test]
fn overdose_words_in_the_past_or_in_thoughts_are_not_in_progress() {
    assert_levels(
        &engine(),
        &[
            ("i overdosed on purpose two weeks ago", High),
            ("i overdosed last month and ended up in the er", High),
            ("i keep thinking about overdosing", Moderate),
            ("i'm scared of overdosing again", Moderate),
            ("i overdosed back in 2016", Low),
            ("my friend overdosed years ago and it still hurts", Low),
            ("i think i'm overdosing", Imminent),
            ("overdosing rn please help", Imminent),
            ("i think i overdosed, my chest hurts", Imminent),
            ("my girlfriend just overdosed", Imminent),
        ],
    );
}

/// "X me va a matar si..." from family is hyperbole; from a partner (unless laughed
/// off) or over a debt it is a threat.
#[test]
fn threat_hyperbole_versus_real_threats() {
    assert_levels(
        &engine(),
        &[
            ("mi tía me va a matar si llego tarde otra vez", Low),
            (
                "la maestra me va a matar cuando vea mis calificaciones jaja",
                Low,
            ),
            ("el coach nos va a matar con tantas vueltas", Low),
            (
                "mi novio me va a matar jaja se me olvidó su cumpleaños",
                Low,
            ),
            ("mi esposo me va a matar si se entera", High),
            ("me van a matar si no pago", High),
            ("my husband is going to kill me when he gets home", High),
            ("my wife is going to kill me, i forgot to buy milk lol", Low),
        ],
    );
}

/// Gurgling, rattling or odd snoring after use; a gurgling stomach is not.
#[test]
fn agonal_breathing_sounds() {
    assert_levels(
        &engine(),
        &[
            ("he's making a gurgle sound and won't wake up", Imminent),
            ("she's snoring really weird after using", Imminent),
            ("my stomach keeps gurgling", Low),
        ],
    );
}

/// The new combinations fire, and only when their parts are close together.
#[test]
fn release_and_first_use_combine_only_nearby() {
    let e = engine();
    let a = e.assess("first bag since sober living");
    assert_eq!(a.level, High, "{a:?}");
    assert!(
        a.reasons
            .iter()
            .any(|r| r.rule == "combo.release_first_use")
    );
    let a = e.assess("the rope is in the shed and i think about it every night");
    assert_eq!(a.level, High, "{a:?}");
    assert!(a.reasons.iter().any(|r| r.rule == "combo.lethal_fixation"));
    let filler =
        "I have been talking with my sister about school and work and the weather this week. "
            .repeat(4);
    let far = format!("first time using the new bus pass. {filler} I got out of jail in 2019.");
    assert_eq!(e.assess(&far).level, Low);
}

/// A past overdose or a thought of one is not reported as an overdose in progress.
#[test]
fn recent_overdose_is_not_reported_as_in_progress() {
    let e = engine();
    let a = e.assess("i od'd on purpose last weekend");
    assert_eq!(a.level, High, "{a:?}");
    assert!(
        a.reasons.iter().all(|r| r.rule != "overdose.in_progress"),
        "{a:?}"
    );
    let a = e.assess("i keep daydreaming about overdosing");
    assert_eq!(a.level, Moderate, "{a:?}");
    assert!(a.reasons.iter().all(|r| r.level < Imminent), "{a:?}");
}

/// Every labelled message of the sets the model was trained on.
fn training_texts() -> Vec<String> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/eval");
    [
        "dev", "heldout", "heldout2", "heldout3", "heldout4", "heldout5", "heldout6", "blind-a",
        "blind-b", "blind-c", "blind-d", "blind-e", "blind-f", "blind-g",
    ]
    .iter()
    .flat_map(|set| {
        let text = std::fs::read_to_string(format!("{dir}/{set}.jsonl")).expect("eval set");
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).expect("json line");
                v["text"].as_str().expect("text").to_owned()
            })
            .collect::<Vec<_>>()
    })
    .collect()
}

/// The model only raises: with it, no message is below the rules' level,
/// and a raise is explained by a `model.<level>` reason at that level
/// whose span lies in the text.
#[test]
fn model_only_raises_and_says_so() {
    let (rules, full) = (engine(), with_model());
    let mut raised = 0;
    for text in training_texts() {
        let (r, m) = (rules.assess(&text), full.assess(&text));
        assert!(m.level >= r.level, "{text:?}: {r:?} -> {m:?}");
        let reason = m.reasons.iter().find(|x| x.rule.starts_with("model."));
        if m.level > r.level {
            raised += 1;
            let reason = reason.unwrap_or_else(|| panic!("{text:?}: raise without reason {m:?}"));
            assert_eq!(reason.rule, format!("model.{}", m.level.as_str()));
            assert_eq!(reason.level, m.level);
            assert!(!reason.label.is_empty());
            assert!(reason.end <= text.chars().count(), "{reason:?}");
        } else {
            assert!(reason.is_none(), "{text:?}: {m:?}");
        }
    }
    assert!(raised > 10, "the model raised only {raised} messages");
    assert_eq!(
        full.version(),
        format!(
            "{}+model.{}",
            rules.version(),
            full.model().map_or("", |m| m.version())
        )
    );
}

/// Risk worded in a way no rule foresaw: the rules see a farewell or
/// nothing at all; the model, trained on such messages, raises them.
/// (These texts are in its training data: this checks the model is wired
/// in, not how well it generalises — docs/triage.md has those figures.)
#[test]
fn model_raises_risk_the_rules_miss() {
    let (rules, full) = (engine(), with_model());
    for (text, want) in [
        (
            "my shift ends at 11. ive got the whole bundle in my locker and nobody is expecting me home. after tonight it wont matter",
            Imminent,
        ),
        ("wrote a note. its in my wallet. havent decided when", High),
        (
            "i cnat feel my face i thinl i did to much, my breathing is rlly slow",
            Imminent,
        ),
    ] {
        assert!(rules.assess(text).level < want, "{text:?}");
        let a = full.assess(text);
        assert!(a.level >= want, "{text:?}: {a:?}");
    }
}

/// What the rules negated is not evidence for the model either.
#[test]
fn model_does_not_see_negated_words() {
    let e = with_model();
    assert_levels(
        &e,
        &[
            ("no me voy a matar", Low),
            ("I'm not going to kill myself", Low),
            ("i would never hurt myself", Low),
            ("nunca me haría daño", Low),
        ],
    );
}

// --------------------------------------------- categories added in rulebook 2026.11.24

/// An attempt under way said without the usual words: a ligature on, a
/// height reached, gas with the windows sealed, bleeding that won't stop,
/// a child who got into the take-homes, a goodbye in other words. The
/// look-alikes stay below imminent.
#[test]
fn attempts_under_way_in_other_words() {
    let e = engine();
    assert_levels(
        &e,
        &[
            ("rope's up. stool is right here", Imminent),
            ("🪢 its around my neck now", Imminent),
            ("ya tengo la cuerda en el cuello", Imminent),
            ("estoy parada arriba del edificio", Imminent),
            (
                "climbed to the top of the parking garage, its windy",
                Imminent,
            ),
            ("opened the gas and taped the windows shut", Imminent),
            ("sitting in the tub with my wrists open", Imminent),
            (
                "my 3 year old got into my methadone and shes so sleepy",
                Imminent,
            ),
            ("mi hijo se encerró en el baño con un cinturón", Imminent),
            ("tell my kids daddy loves them", Imminent),
            ("diganle a mis hijas que las quise mucho", Imminent),
            ("goodnight forever 💊", Imminent),
            ("i already took them all. dont be sad ok", Imminent),
            ("if i dont answer in 20 min call 911 to my place", Imminent),
            ("tonights the night. got the gun", Imminent),
            // Means at hand alone is high; with "now" it is imminent.
            ("got the pistol loaded on my lap", High),
            ("got the pistol loaded on my lap rn", Imminent),
            ("i already took them, thanks for the reminder", Low),
            ("opened the gas bill today, ouch", Low),
            ("the kids got into the cookies lol", Low),
        ],
    );
    for text in [
        "we climbed to the top of the tower last summer",
        "my necklace is around my neck lol",
        "he has had seizures since he was a kid",
    ] {
        assert!(e.assess(text).level < Imminent, "{text:?}");
    }
}

/// Overdose signs said other ways (grey lips "kinda", someone "all blue",
/// narcan that did nothing, a weak pulse, seizing, Caribbean Spanish), and
/// the writer's own body signs after using, a release or a depressant mix.
#[test]
fn overdose_signs_in_other_words() {
    let e = engine();
    assert_levels(
        &e,
        &[
            ("his lips are kinda gray and he nodded out", Imminent),
            ("my cousin is all blue", Imminent),
            ("gave him 2 narcans and nothing happened", Imminent),
            ("le pusimos narcan y sigue sin reaccionar", Imminent),
            ("pulse is really weak and hes cold", Imminent),
            ("hes seizing after a shot", Imminent),
            ("el pana ta morao y no ta respirando", Imminent),
            ("mi primo está roncando bien raro", Imminent),
            ("used after 90 days clean and i cant feel my legs", Imminent),
            ("me meti la chiva y siento q me voy", Imminent),
            ("mixed my bars with the fetty on purpose", Imminent),
            ("my car is blue lol", Low),
            ("mixed the paint colors on purpose", Low),
        ],
    );
    // Body signs alone are not an overdose: a panic attack says it too.
    for text in [
        "i cant breathe, panic attack again",
        "cant feel my legs after leg day",
    ] {
        let level = e.assess(text).level;
        assert!(level < High, "{text:?}: {level}");
    }
}

/// Issue 13, long texts: a person writing at length, in their own voice,
/// about an overdose or a jump in progress is imminent (the one-window gate
/// of `689457b` showed these as high); a long supportive reply to someone
/// else, written to "you", is not. Until round eight the model alone made
/// them imminent; since the long imminent threshold rose to 0.5 the rules
/// do ("the whole strip", a car park's top level with a note left; the
/// model's own-voice path is tested in `model::tests`).
#[test]
fn a_long_message_in_the_persons_own_voice_can_be_imminent_a_long_reply_cannot() {
    let e = with_model();
    let own = [
        "hey. sorry this is long, i dont really know who else to message at this hour. my \
         flatmate is away for the weekend and the house is really quiet. its been a rough month \
         with work and my sister not speaking to me and everything piling up on top of me. about \
         twenty minutes ago i swallowed the whole strip of my sleeping tablets with most of a \
         bottle of vodka. my hands are tingling and the room is starting to spin and my chest \
         feels heavy. im lying on the sofa with my phone. im not sure why im writing this now, i \
         think im scared. can someone stay with me",
        "ok so this is going to sound weird. im sitting in my car in the multi storey by the \
         station, top level, engine off. its been raining all day and i havent eaten. my landlord \
         is kicking me out on friday and my mum isnt answering. i keep looking at the edge over \
         there and thinking it would be quick. ive written something for my brother and its on \
         the passenger seat. im going to get out of the car in a minute. i just needed to tell \
         someone before i go, i dont even know why im typing this to a stranger",
    ];
    for text in own {
        assert!(text.split_whitespace().count() > model::WINDOW_WORDS);
        let a = e.assess(text);
        assert_eq!(a.level, Imminent, "{text}: {a:?}");
    }
    let reply = "im really sorry youre going through this and im glad you posted. you dont have \
         to have it all figured out tonight. when you feel like swallowing everything in the \
         cabinet, you could give the pills to someone you trust or put them somewhere hard to \
         reach. you could also write down the reasons you have stayed so far, even small ones. \
         you said your sister still calls you on sundays, that counts. if you ever feel like you \
         cant keep yourself safe please call a crisis line or go to the er, you deserve help and \
         you deserve to stay";
    assert!(reply.split_whitespace().count() > model::WINDOW_WORDS);
    let a = e.assess(reply);
    assert!(a.level < Imminent, "{a:?}");
}

/// A supportive reply of more than one model window, written to "you"
/// and about nothing risky, so that what follows is past the first window.
const REPLY: &str = "hey op, thanks for posting. you are not alone in this and you did the \
     right thing by writing it down. your job sounds exhausting and your landlord sounds awful. \
     you could ask your doctor about a sick note, and you might call the tenants union about the \
     deposit. take it one day at a time, you have got this. ";

/// Issue 13, addressed voice: past the first window, risk in text written
/// to someone else ("you are having suicidal thoughts, please reach out")
/// does not raise a message above moderate by itself, rules or model (the
/// shipped engine called all three imminent); the same words in the
/// writer's own voice, or after the writer comes back into the sentence,
/// count fully. English and Spanish.
#[test]
fn past_the_first_window_risk_addressed_to_someone_else_is_at_most_moderate() {
    assert!(REPLY.split_whitespace().count() > voice::FROM_WORD);
    // Written to someone else, the model does not raise it (it said high).
    assert_eq!(with_model().assess(REPLY).level, Low);
    let addressed = [
        "you are having suicidal thoughts tonight, please reach out to someone. you deserve to live.",
        "op, thinking about suicide does not make you a failure.",
        "si tú tienes pensamientos suicidas esta noche, por favor llama a alguien. no lo hagas.",
    ];
    let own = [
        ("i want to kill myself tonight.", Imminent),
        ("can you help me, i want to kill myself.", High),
        ("are you there? i have a plan to end my life.", High),
        ("quiero quitarme la vida esta noche.", Imminent),
        ("te escribo porque quiero quitarme la vida.", High),
        // After a clause break the writer's own words, subject dropped.
        ("you never listen, going to end it all.", High),
        ("nunca me escuchas, me voy a matar.", High),
    ];
    for e in [engine(), with_model()] {
        for tail in addressed {
            let text = format!("{REPLY}{tail}");
            let a = e.assess(&text);
            assert!(a.level <= Moderate, "{tail}: {a:?}");
            // The same words as a short message are not discounted.
            assert!(e.assess(tail).level >= High, "{tail} alone");
        }
        for (tail, want) in own {
            let text = format!("{REPLY}{tail}");
            let a = e.assess(&text);
            assert!(a.level >= want, "{tail}: want {want}, got {a:?}");
        }
    }
}

/// Someone else's emergency is not advice: a third person after a "you"
/// is judged by the rules' own third-person context (an overdose in
/// progress is imminent whoever it is).
#[test]
fn a_third_person_after_you_ends_the_addressed_voice() {
    imminent_after_the_reply(&[
        "do you know what to do, he took all his pills and he is not breathing.",
        "sabes que hacer? ella no respira.",
    ]);
}

/// Each tail after the long supportive `REPLY` is imminent, with the rules
/// alone and with the model.
#[track_caller]
fn imminent_after_the_reply(tails: &[&str]) {
    for e in [engine(), with_model()] {
        for tail in tails {
            let text = format!("{REPLY}{tail}");
            assert_eq!(e.assess(&text).level, Imminent, "{tail}");
        }
    }
}

/// An emergency in progress after a "you" is not advice: rules rated
/// imminent keep their level in an addressed stretch ("are you still
/// there? … not breathing"), where the model does not read.
#[test]
fn an_emergency_in_progress_is_never_discounted() {
    imminent_after_the_reply(&[
        "are you still there? you need to send someone, not breathing and lips are blue",
        "you need to hurry, the cut wont stop bleeding",
    ]);
}

/// Round three's categories (rulebook 2026.12.11–12), in words of my own
/// (the blind sets' messages are scored, not pinned): injuries with signs
/// of a serious one, a ligature set up, a plan with a goodbye or on the way
/// to a high place, a locked door with no answer, minutes ago is now, bare
/// reach-outs in more words, and the near misses that stay lower.
#[test]
fn round_three_categories() {
    assert_levels(
        &engine(),
        &[
            ("i cut my arm and its still going, kinda dizzy", Imminent),
            ("i cut myself last week, im alone a lot", High),
            (
                "wrote a note for my wife, its on the table. this is it for me",
                Imminent,
            ),
            (
                "ya voy rumbo al puente, deje una carta para mi mama",
                Imminent,
            ),
            (
                "toque la puerta del baño y mi hermano no contesta",
                Imminent,
            ),
            ("i knocked on her door and she answered", Low),
            ("took 20 pills about an hour ago", Imminent),
            ("took some pills years ago", Low),
            ("he aint woke up since this morning, we was using", Imminent),
            ("the rope is tied to the beam in the garage", Imminent),
            ("anyone??", Moderate),
            ("porfa contesten", Moderate),
            ("me quiero morir 😭", Moderate),
            ("me muero de risa jaja", Low),
            ("su!c!de", Moderate),
            ("end my l1fe tonight", Imminent),
            // Rulebook 2026.12.14 (round four's misses, in other words).
            ("been stashing my take-homes in a shoebox for a month", High),
            ("we are saving the doses for the weekend trip", Low),
            (
                "looking for the bag that put 2 guys in the ER last week",
                High,
            ),
            ("the death metal show was great", Low),
            ("been holding pressure on it for like 40 minutes", Imminent),
            ("her wrist is cut open and she wont talk", Imminent),
            ("honestly id be fine if a bus hit me", Moderate),
            ("pueden llamarme", Moderate),
            ("¿me pueden llamar mañana?", Low),
            // Rulebook 2026.12.15 (round five's misses, in other words).
            (
                "walked into the lake with my backpack full of bricks",
                Imminent,
            ),
            (
                "ill be dead by morning, nobody needs to worry anymore",
                Imminent,
            ),
            ("an hour ago i drank both my take home bottles", Imminent),
            ("tengo una cortada bien honda en el brazo", Imminent),
            ("wish 1 were dead", Moderate),
            // Rulebook 2026.12.17: rain is not blood.
            ("its pouring outside, cant make it to group", Low),
            ("blood is pouring out of my arm", Imminent),
            ("im home alone tonight watching movies", Low),
        ],
    );
}

/// Rulebook 2026.12.18 (round eight): what the long sets' imminent
/// messages said that only the model had caught, in other words, and the
/// topic words that had made supportive replies high (the C-SSRS sample's
/// Supportive users: "talk about suicidal thoughts", "no one should commit
/// suicide", "she fell out of love").
#[test]
fn round_eight_categories() {
    assert_levels(
        &engine(),
        &[
            (
                "about twenty minutes ago i took everything that was in the bathroom cabinet",
                Imminent,
            ),
            (
                "ten minutes ago i did everything i had, all at once",
                Imminent,
            ),
            ("i did everything i had to do at work today", Low),
            ("swallowed the whole strip of my sleeping tablets", Imminent),
            (
                "im sitting outside my dealers place and i want to buy enough to make it all stop",
                Imminent,
            ),
            ("my dealer is home, i can see his car", Moderate),
            ("estoy afuera de la casa del transa", Moderate),
            (
                "my tolerance is gone after detox and honestly thats kind of the point now",
                Imminent,
            ),
            ("i just want my kids to know it wasnt an accident", High),
            ("quiero que sepan que no fue un accidente", High),
            ("the police know it wasnt an accident", Low),
            ("it takes courage to talk about suicidal thoughts", Moderate),
            ("ive been having suicidal thoughts again", High),
            ("suicidal thoughts", High),
            ("no one should ever commit suicide", Moderate),
            ("im going to commit suicide", High),
            ("thinking of committing suicide", High),
            ("she fell out of love with me", Low),
            ("he fell out and hes not breathing", Imminent),
            (
                "on the top level of the car park, wrote something for my brother",
                Imminent,
            ),
            (
                "parked on the top level of the car park for the concert",
                Low,
            ),
            ("💊💊🔚", Imminent),
            ("peace ✌️ see you tomorrow", Low),
            ("se ve lo amarillo adentro de la herida", Imminent),
            ("i can see the fat inside the cut", Imminent),
            ("you can see the fat on the steak", Low),
            ("its not worth it to end it now", Low),
            ("when we got back she had taken all her pills", Imminent),
            ("when we got home my brother wasnt breathing", Imminent),
            ("when people are suicidal they cant see it", Moderate),
            ("just sitting there and not moving", Low),
            ("shes on the floor not moving", Imminent),
        ],
    );
}

/// Past the first window, a combination's parts must be within a sentence
/// or so: a recent attempt in one paragraph and "today" in another is not
/// an attempt now. Within the first window (every SMS) the rulebook's
/// combination window applies as before.
#[test]
fn past_the_first_window_a_combination_needs_its_parts_close() {
    let story = "so the week was long and the bus was late again and my sister came by \
                 with groceries and we talked about the kids and the yard and the old dog \
                 and the rain and the neighbours and the church fair and the price of gas \
                 and her new job at the clinic and";
    let sms = "i tried to kill myself last week and today is hard";
    let apart = format!("i tried to kill myself last week. {story} {story} today my sister visits");
    let close = format!("{story} {story} {sms}");
    let e = engine();
    assert!(apart.split_whitespace().count() > model::WINDOW_WORDS);
    assert_eq!(e.assess(sms).level, Imminent);
    assert_eq!(e.assess(&close).level, Imminent);
    assert_eq!(e.assess(&apart).level, High);
}
