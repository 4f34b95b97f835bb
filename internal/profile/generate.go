package profile

import (
	"io"
	"strconv"
)

var (
	benchFirstNames = []string{"Ann", "Bruno", "Chloé", "Dmitri", "Eva", "Farid", "Greta", "Hiro", "Inès", "Jonas"}
	benchCities     = []string{"Paris", "Lyon", "Berlin", "Madrid", "Lisboa", "Roma", "Oslo", "Kraków", "Dublin", "Wien"}
	benchDomains    = []string{"example.com", "example.org", "example.net", "mail.example", "corp.example"}
)

// GenerateCSV returns a reader of a realistic import of n profiles (email, external id, phone,
// locale, time zone and three attributes), for benchmarks and load tests. seed varies the
// addresses so that two generated files do not overlap.
func GenerateCSV(n, seed int) io.Reader {
	pr, pw := io.Pipe()
	go func() {
		buf := make([]byte, 0, 1<<16)
		buf = append(buf, "email,external_id,phone,locale,time_zone,first_name,city,score:number\n"...)
		for i := 0; i < n; i++ {
			id := strconv.Itoa(seed*100_000_000 + i)
			buf = append(buf, "user"...)
			buf = append(buf, id...)
			buf = append(buf, '@')
			buf = append(buf, benchDomains[i%len(benchDomains)]...)
			buf = append(buf, ",c"...)
			buf = append(buf, id...)
			buf = append(buf, ",+3361"...)
			buf = strconv.AppendInt(buf, int64(10_000_000+i%90_000_000), 10)
			buf = append(buf, ",fr-FR,Europe/Paris,"...)
			buf = append(buf, benchFirstNames[i%len(benchFirstNames)]...)
			buf = append(buf, ',')
			buf = append(buf, benchCities[(i/7)%len(benchCities)]...)
			buf = append(buf, ',')
			buf = strconv.AppendInt(buf, int64(i%1000), 10)
			buf = append(buf, '\n')
			if len(buf) > 60_000 {
				if _, err := pw.Write(buf); err != nil {
					return
				}
				buf = buf[:0]
			}
		}
		_, _ = pw.Write(buf)
		pw.Close()
	}()
	return pr
}
