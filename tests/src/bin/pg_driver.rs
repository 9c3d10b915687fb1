//! A skill that talks to PostgreSQL the way Rust services do, with the `postgres` crate
//! (tokio-postgres underneath): each statement is prepared and described once, then bound and
//! executed with binary results and no Describe of its own; a portal is fetched a row at a
//! time inside a transaction. Prints what it got, one line per row or outcome.
//!
//! Usage: pg_driver HOST PORT

use postgres::{Client, NoTls};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, host, port] = args.as_slice() else {
        eprintln!("usage: pg_driver HOST PORT");
        std::process::exit(2);
    };
    if let Err(e) = run(host, port) {
        eprintln!("pg_driver: {e}");
        std::process::exit(1);
    }
}

fn run(host: &str, port: &str) -> Result<(), postgres::Error> {
    let mut client = Client::connect(
        &format!("host={host} port={port} user=skill dbname=shop"),
        NoTls,
    )?;
    let by_id = client.prepare("SELECT id, name, email, card FROM customers WHERE id = $1")?;
    for id in [1i32, 2] {
        for row in client.query(&by_id, &[&id])? {
            let (id, name, email, card): (i32, String, String, String) =
                (row.get(0), row.get(1), row.get(2), row.get(3));
            println!("{id}|{name}|{email}|{card}");
        }
    }
    match client.execute("DELETE FROM customers", &[]) {
        Ok(n) => println!("deleted {n}"),
        Err(e) => println!("denied {}", e.code().map_or("(no SQLSTATE)", |c| c.code())),
    }
    let orders: i64 = client.query_one("SELECT count(*) FROM orders", &[])?.get(0);
    println!("{orders}");
    let mut tx = client.transaction()?;
    let portal = tx.bind("SELECT email FROM customers ORDER BY id", &[])?;
    for _ in 0..2 {
        for row in tx.query_portal(&portal, 1)? {
            let email: String = row.get(0);
            println!("{email}");
        }
    }
    tx.commit()
}
